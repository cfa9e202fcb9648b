"""Training through `transformers.Trainer` from a run config: tokenizer, data, model, then `Trainer.train()`.

The final model is saved at the root of `training.output_dir` as a checkpoint folder (weights, config, remote code,
tokenizer, generation config), with the resolved run config beside it.
"""

import math
import shutil
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

from ..configuration.presets import preset_config
from ..data import arithmetic
from ..data.processing import check_block_size, collator, pack, tokenize, tokenize_prompt_target
from ..data.sources import TINY_SHAKESPEARE, contiguous_splits, load_hub_dataset, load_local_files
from ..data.tokenization import make_tokenizer
from . import run_config

# The seeds' recipe where the run config is silent: AdamW, linear warm-up then cosine to 0.1 * lr, clipping at 1.
TRAINING_DEFAULTS = dict(
    lr_scheduler_type="cosine_with_min_lr",
    lr_scheduler_kwargs={"min_lr_rate": 0.1},
    max_grad_norm=1.0,
    weight_decay=0.1,
    adam_beta1=0.9,
    adam_beta2=0.95,
    report_to="none",
    dataloader_pin_memory=torch.cuda.is_available(),
)


class MtlmTrainer(Trainer):
    """The HF Trainer with weight decay on matrices only and perplexity beside every evaluation loss."""

    def get_decay_parameter_names(self, model) -> list[str]:
        # Matrices (linear weights, embeddings, experts) decay; norms, biases and other vectors do not.
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        super().log(logs, *args, **kwargs)


def load_texts(data: dict) -> DatasetDict:
    """The text splits the data section names (a "text" column per split)."""
    source = data.get("source", "tinyshakespeare")
    if source in ("tinyshakespeare", "text"):
        path = TINY_SHAKESPEARE if source == "tinyshakespeare" else data["path"]
        return contiguous_splits(path, data.get("splits") or {"train": 0.9, "validation": 0.1})
    if source == "files":
        return load_local_files(data["files"])
    if source == "hub":
        return load_hub_dataset(data["name"], data.get("config"), data.get("splits"))
    settings = dict(data.get("arithmetic") or {})
    folder = Path(settings.pop("out_dir", "data/arithmetic"))
    if not (folder / "train.jsonl").is_file():
        arithmetic.write_splits(
            folder, n_samples=settings.get("n_samples", 70000), n_operands=settings.get("N", 2),
            low=settings.get("A", 0), high=settings.get("B", 999), ops=settings.get("ops", "+"),
            seed=settings.get("seed", 0),
        )
    return arithmetic.load_splits(folder)


def build_tokenizer(spec: dict, texts: DatasetDict):
    kind = spec.get("kind", "char")
    if kind == "pretrained":
        return AutoTokenizer.from_pretrained(spec["path"])
    corpus = ["".join(texts[split]["text"]) for split in texts] if kind in ("char", "bpe") else []
    return make_tokenizer(kind, corpus, spec.get("vocab_size"))


def build_model_config(model: dict, tokenizer):
    """The model config of the run, with the tokenizer's size and special ids."""
    fields = {key: value for key, value in model.items() if key not in ("preset", "model_type")}
    special = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    if "vocab_size" in fields and fields["vocab_size"] != len(tokenizer):
        raise ValueError(
            f"model.vocab_size={fields['vocab_size']} does not fit the tokenizer's {len(tokenizer)} ids: drop "
            "model.vocab_size (it is taken from the tokenizer) or use the matching tokenizer."
        )
    fields = {**special, **fields, "vocab_size": len(tokenizer)}
    if "preset" in model:
        return preset_config(model["preset"], **fields)
    return AutoConfig.for_model(model["model_type"], **fields)


def build_datasets(data: dict, texts: DatasetDict, tokenizer) -> DatasetDict:
    num_proc = data.get("num_proc")
    if data.get("source") == "arithmetic":
        return DatasetDict({split: tokenize_prompt_target(texts[split], tokenizer, num_proc=num_proc)
                            for split in texts})
    block_size = data.get("block_size", 128)
    return DatasetDict({split: pack(tokenize(texts[split], tokenizer, num_proc=num_proc), block_size,
                                    num_proc=num_proc) for split in texts})


def prepare_output_dir(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to mix two runs in one folder."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (overwrite or resume):
        raise FileExistsError(
            f"{output_dir} already holds a run: pass --resume to continue it, --overwrite to replace it, or "
            "choose another training.output_dir."
        )
    if overwrite and output_dir.is_dir():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 50) -> str:
    """A sampled continuation of `prompt`."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                top_k=top_k, pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def train(run: dict, overwrite: bool = False, resume: bool = False) -> Trainer:
    """Run the training a validated run config describes; returns the Trainer."""
    training = {**TRAINING_DEFAULTS, **run["training"]}
    output_dir = Path(training["output_dir"])
    prepare_output_dir(output_dir, overwrite, resume)
    set_seed(training.get("seed", 42))

    texts = load_texts(run["data"])
    tokenizer = build_tokenizer(run["tokenizer"], texts)
    config = build_model_config(run["model"], tokenizer)
    if run["data"].get("source") != "arithmetic":
        check_block_size(run["data"].get("block_size", 128), config)
    datasets = build_datasets(run["data"], texts, tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    run_config.save(run, output_dir)

    evaluation_split = "validation" if "validation" in datasets else None
    trainer = MtlmTrainer(
        model=model,
        args=TrainingArguments(**training),
        train_dataset=datasets["train"],
        eval_dataset=datasets[evaluation_split] if evaluation_split else None,
        data_collator=collator(tokenizer),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    if evaluation_split:
        trainer.evaluate()
    trainer.save_model(str(output_dir))
    return trainer
