"""Training through `transformers.Trainer` from a run config: tokenizer, data, model, then `Trainer.train()`.

The final model is saved at the root of `training.output_dir` as a checkpoint folder (weights, config, remote code,
tokenizer, generation config), with the resolved run config beside it.
"""

import math
import os
import platform
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from accelerate import PartialState  # noqa: E402
from datasets import DatasetDict  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_callback import ExportableState  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402

from ..configuration.presets import preset_config
from ..data import arithmetic
from ..data.processing import check_block_size, collator, pack, tokenize, tokenize_prompt_target
from ..data.sources import TINY_SHAKESPEARE, contiguous_splits, load_hub_dataset, load_local_files
from ..data.tokenization import make_tokenizer
from ..evaluation.exact_match import exact_match
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
    # Without an accelerator, say so: then torchrun / accelerate launch give data-parallel CPU processes (gloo).
    use_cpu=not torch.accelerator.is_available(),
    bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    include_num_input_tokens_seen="non_padding",  # the model card's token count
)


class NonFiniteLossError(RuntimeError):
    pass


class MtlmTrainer(Trainer):
    """The HF Trainer with weight decay on matrices only, a stop at the first non-finite loss, and logs that carry
    cumulative training FLOPs, perplexity beside every evaluation loss, and MoE's auxiliary loss on its own."""

    def get_decay_parameter_names(self, model) -> list[str]:
        # Matrices (linear weights, embeddings, experts) decay; norms, biases and other vectors do not.
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux_loss = outputs.get("aux_loss") if isinstance(outputs, dict) else None
        if aux_loss is not None and model.training:
            self._aux_losses = getattr(self, "_aux_losses", []) + [aux_loss.detach()]
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"The training loss became {loss.item()} at step {self.state.global_step + 1}.")
        return loss

    def _save_checkpoint(self, model, trial):
        # A save that fails (a full disk, say) must not leave a partial folder that --resume would take for the
        # newest checkpoint: remove it, so the previous checkpoint stays the last one.
        folder = Path(self._get_output_dir(trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except OSError as error:
            shutil.rmtree(folder, ignore_errors=True)
            previous = get_last_checkpoint(str(folder.parent))
            kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
            raise OSError(f"Saving {folder.name} failed ({error}); the partial folder was removed and {kept}. "
                          "Free disk space, then continue with --resume.") from error

    def log(self, logs: dict, *args, **kwargs) -> None:
        logs["flos"] = self.state.total_flos + self.current_flos
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        if "loss" in logs and getattr(self, "_aux_losses", None):
            logs["aux_loss"] = torch.stack(self._aux_losses).mean().item()
            self._aux_losses = []
        super().log(logs, *args, **kwargs)


class EvaluationExtras(TrainerCallback):
    """At each evaluation: greedy exact match on (part of) the validation split for prompt/target data, or a
    sampled continuation for text."""

    def __init__(self, tokenizer, validation_rows: list[dict] | None, sample_prompt: str = "\n",
                 exact_match_limit: int = 500):
        self.tokenizer = tokenizer
        self.validation_rows = (validation_rows or [])[:exact_match_limit]
        self.sample_prompt = sample_prompt

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if self.validation_rows:
            result = exact_match(model, self.tokenizer, self.validation_rows, progress=False)
            metrics["eval_exact_match"] = result["exact_match"]
            state.log_history.append({"eval_exact_match": result["exact_match"], "step": state.global_step})
            print(f"\nstep {state.global_step}: exact match {result['exact_match']:.4f} on {result['n']} examples")
        else:
            print(f"\nstep {state.global_step} sample: {sample(model, self.tokenizer, self.sample_prompt, 100)!r}")


class TrainingEnvironment(TrainerCallback, ExportableState):
    """Records where a run trained (device, process count, library versions) in trainer_state.json, beside the steps,
    tokens and FLOPs the Trainer records there, for the model card."""

    def __init__(self, hardware: str | None = None, processes: int | None = None, software: str | None = None):
        self.hardware = hardware or describe_hardware()
        self.processes = processes or PartialState().num_processes
        self.software = software or f"torch {torch.__version__}, transformers {transformers.__version__}"

    def state(self) -> dict:
        return {"args": {"hardware": self.hardware, "processes": self.processes, "software": self.software},
                "attributes": {}}


def describe_hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


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


def build_tokenizer(spec: dict, texts: DatasetDict, init_from: str | None = None):
    """The tokenizer the tokenizer section describes; with no section, a run that starts from a checkpoint uses the
    checkpoint's."""
    if init_from and not spec:
        return AutoTokenizer.from_pretrained(init_from)
    kind = spec.get("kind", "char")
    if kind == "pretrained":
        return AutoTokenizer.from_pretrained(spec["path"])
    corpus = ["".join(texts[split]["text"]) for split in texts] if kind in ("char", "bpe") else []
    return make_tokenizer(kind, corpus, spec.get("vocab_size"))


def build_model_config(model: dict, tokenizer):
    """The model config of the run, with the tokenizer's size and special ids."""
    fields = {key: value for key, value in model.items() if key not in run_config.MODEL_SOURCE_KEYS}
    if "init_from" in model:
        config = AutoConfig.from_pretrained(model["init_from"], **fields)
        if config.vocab_size != len(tokenizer):
            raise ValueError(f"{model['init_from']} has vocab_size={config.vocab_size} but the tokenizer has "
                             f"{len(tokenizer)} ids: leave the tokenizer section out to use the checkpoint's own.")
        return config
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


def build_model(config, init_from: str | None = None):
    """A freshly initialised model, or the weights of `init_from` under `config`, which must then fit them exactly."""
    if not init_from:
        return AutoModelForCausalLM.from_config(config)
    model, info = AutoModelForCausalLM.from_pretrained(init_from, config=config, output_loading_info=True)
    problems = {kind: names for kind, names in info.items() if kind != "error_msgs" and names}
    if problems:
        raise ValueError(f"The model section changes the shape of {init_from}'s weights ({problems}): set only fields "
                         "that keep every weight's shape (dropout, initializer_range, ...), or grow it with mtlm grow.")
    return model


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


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
           top_p: float = 1.0) -> str:
    """The prompt and its continuation (never past the model's context): sampled, or greedy when `temperature` is
    0."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    max_new_tokens = max(0, min(max_new_tokens, model.config.max_position_embeddings - inputs["input_ids"].shape[1]))
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if temperature > 0 \
        else {"do_sample": False}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                **sampling)
    model.train(was_training)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def save_final_model(trainer: Trainer, output_dir: Path) -> None:
    """Save into a staging folder, then move the files into place: a failed save leaves the earlier files whole."""
    staging = output_dir / ".final-model.partial"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # no process may remove the staging folder another is writing
    try:
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            for path in staging.iterdir():
                path.replace(output_dir / path.name)
    finally:
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)


def plot_losses(log_history: list[dict], path: Path) -> None:
    """Training and validation loss against training FLOPs and against steps, side by side."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "train"), ("eval_loss", "validation")):
        entries = [entry for entry in log_history if key in entry and "flos" in entry]
        if entries:
            axes[0].plot([entry["flos"] for entry in entries], [entry[key] for entry in entries], label=label)
            axes[1].plot([entry["step"] for entry in entries], [entry[key] for entry in entries], label=label)
    axes[0].set_xscale("log")
    for axis, xlabel in zip(axes, ("training FLOPs", "step")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("loss (nats/token)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def train(run: dict, overwrite: bool = False, resume: bool = False, sample_prompt: str = "\n",
          callbacks: tuple[TrainerCallback, ...] = ()) -> Trainer:
    """Run the training a validated run config describes (with any extra Trainer `callbacks`); returns the
    Trainer."""
    training = {**TRAINING_DEFAULTS, **run["training"]}
    output_dir = Path(training["output_dir"])
    # Under torchrun / accelerate launch every process runs this; the main one owns the folder and builds the data
    # (and datasets' cache) first, the others then read it.
    processes = PartialState(cpu=training["use_cpu"])
    if processes.is_main_process:
        prepare_output_dir(output_dir, overwrite, resume)
    processes.wait_for_everyone()
    set_seed(training.get("seed", 42))

    init_from = run["model"].get("init_from")
    with processes.main_process_first():
        texts = load_texts(run["data"])
        tokenizer = build_tokenizer(run["tokenizer"], texts, init_from)
        config = build_model_config(run["model"], tokenizer)
        prompt_target = run["data"].get("source") == "arithmetic"
        if not prompt_target:
            check_block_size(run["data"].get("block_size", 128), config)
        datasets = build_datasets(run["data"], texts, tokenizer)
    model = build_model(config, init_from)
    if processes.is_main_process:
        run_config.save(run, output_dir)

    evaluation_split = "validation" if "validation" in datasets else None
    validation_rows = texts["validation"].to_list() if prompt_target and evaluation_split else None
    trainer = MtlmTrainer(
        model=model,
        args=TrainingArguments(**training),
        train_dataset=datasets["train"],
        eval_dataset=datasets[evaluation_split] if evaluation_split else None,
        data_collator=collator(tokenizer),
        processing_class=tokenizer,
        callbacks=[EvaluationExtras(tokenizer, validation_rows, sample_prompt), TrainingEnvironment(), *callbacks],
    )
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    except NonFiniteLossError as error:
        last = get_last_checkpoint(str(output_dir))
        kept = f"The last good checkpoint is {last} (continue with --resume after lowering the learning rate)." \
            if last else "No checkpoint was saved before it."
        raise NonFiniteLossError(f"{error} Training stopped. {kept}") from None
    if evaluation_split:
        trainer.evaluate()
    save_final_model(trainer, output_dir)
    trainer.save_state()
    if processes.is_main_process:
        plot_losses(trainer.state.log_history, output_dir / "loss.png")
    return trainer
