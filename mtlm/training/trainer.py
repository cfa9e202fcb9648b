"""Training through `transformers.Trainer`: the run config's steps (mtlm/training: datasets, tokenizer, model) give a
model and its data, which the Trainer trains.

The final model is saved at the root of `training.output_dir` as a checkpoint folder (weights, config, remote code,
tokenizer, generation config), with the resolved run config beside it. Every checkpoint is written whole, or not at
all.
"""

import importlib.util
import math
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from accelerate import PartialState
from torch.utils.data import WeightedRandomSampler
from transformers import AutoConfig, EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback, TrackioCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from ..data.arithmetic import layout_weights
from ..data.processing import RandomPositionOffsets, check_block_size, collator
from ..data.shards import ShuffledBlocks, TokenBlocks
from ..errors import UsageError
from ..evaluation.exact_match import continuation, exact_match, greedy_answers, read_answer
from ..files import staged, staging_path
from ..growth.schedule import GrowthSchedule, check_first_stage, growth_stages
from . import run_config
from .datasets import build_datasets, load_texts
from .defaults import training_settings
from .model import build_model, build_model_config
from .optimizers import muon_with_adamw
from .reports import plot_losses, sample
from .run_folder import TRAINER_CHECKPOINT_FILES, RunFolder, check_output_dir, last_complete_checkpoint
from .tokenizer import build_tokenizer


class NonFiniteLossError(RuntimeError):
    pass


def device_scalar(value: int | float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d tensor holding `value` on `device`, written by a kernel (torch.tensor(value, device=...) copies it from
    host memory, which waits for the device)."""
    return torch.empty((), device=device, dtype=dtype).fill_(value)


class MtlmTrainer(Trainer):
    """The HF Trainer with weight decay on matrices only, a stop at the first non-finite loss, and logs that carry
    cumulative training FLOPs, perplexity beside every evaluation loss, and MoE's auxiliary loss on its own."""

    _staging_run_dir: Path | None = None  # while a checkpoint is written: the folder that stands for the run folder
    _first_non_finite: torch.Tensor | None = None  # (step, loss) of the first non-finite loss; step -1 while none
    _tokens_not_counted: torch.Tensor | None = None  # non-padding tokens seen since the state's count was updated

    def __init__(self, *args, train_collator=None, train_sample_weights: torch.Tensor | None = None,
                 optimizer_settings: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_collator = train_collator  # batches training alone (evaluation keeps data_collator)
        self.train_sample_weights = train_sample_weights  # a weight per training row: drawn with replacement
        self.optimizer_settings = optimizer_settings or {}  # the run config's optimizer section

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.optimizer_settings.get("name", "adamw") == "adamw":
            return super().create_optimizer(model)
        model = self.model if model is None else model
        args = self.args
        self.optimizer = muon_with_adamw(
            model, set(self.get_decay_parameter_names(model)), args.weight_decay, args.learning_rate,
            self.optimizer_settings.get("muon_learning_rate"), self.optimizer_settings.get("momentum", 0.95),
            (args.adam_beta1, args.adam_beta2), args.adam_epsilon)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, TokenBlocks) and self.args.train_sampling_strategy == "random":
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return ShuffledBlocks(len(dataset), seed)
        if self.train_sample_weights is None:
            return super()._get_train_sampler(train_dataset)
        # An epoch is still len(dataset) draws, so max_steps, epochs and the FLOPs count mean what they did.
        return WeightedRandomSampler(self.train_sample_weights, len(self.train_sample_weights))

    def get_train_dataloader(self):
        if self.train_collator is None:
            return super().get_train_dataloader()
        collate, self.data_collator = self.data_collator, self.train_collator
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collate

    def get_decay_parameter_names(self, model) -> list[str]:
        # Matrices (linear weights, embeddings, experts) decay; norms, biases and other vectors do not.
        return [name for name, parameter in model.named_parameters() if parameter.ndim >= 2]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux_loss = outputs.get("aux_loss") if isinstance(outputs, dict) else None
        if aux_loss is not None and model.training:
            self._aux_losses = getattr(self, "_aux_losses", []) + [aux_loss.detach()]
        return (loss, outputs) if return_outputs else loss

    # Reading a value back on the host stalls an accelerator, so nothing is read per step: the first non-finite loss
    # (its step and value) and the count of tokens seen stay on the device, and are read where the Trainer reads
    # anyway, before it logs, saves or evaluates.

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._first_non_finite is None:
            self._first_non_finite = torch.tensor([-1.0, 0.0], device=loss.device)
        step = device_scalar(self.state.global_step + 1, loss.device, torch.float32)
        step_and_loss = torch.stack([step, loss.detach().float()])
        first = ~torch.isfinite(loss.detach()) & (self._first_non_finite[0] < 0)
        self._first_non_finite = torch.where(first, step_and_loss, self._first_non_finite)
        return loss

    def _track_num_input_tokens(self, inputs):
        counted = self.args.include_num_input_tokens_seen
        pad_token_id = getattr(self.processing_class, "pad_token_id", None)
        if counted == "no":
            return
        if counted == "non_padding" and "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
        elif counted == "non_padding" and pad_token_id is not None:
            count = (inputs["input_ids"] != pad_token_id).sum()
        else:
            count = device_scalar(inputs["input_ids"].numel(), inputs["input_ids"].device, torch.int64)
        self._tokens_not_counted = count if self._tokens_not_counted is None else self._tokens_not_counted + count

    def read_device_counters(self) -> None:
        """Stop at a non-finite loss; add the tokens counted on the device to the state."""
        if self._first_non_finite is not None:
            step, loss = self._first_non_finite.tolist()
            if step >= 0:
                raise NonFiniteLossError(f"The training loss became {loss} at step {int(step)}.")
        if self._tokens_not_counted is not None:
            self.state.num_input_tokens_seen += int(self.accelerator.gather(self._tokens_not_counted).sum())
            self._tokens_not_counted = None

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        control = self.control
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
            self.read_device_counters()
        return super()._maybe_log_save_evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # transformers writes checkpoint-N in place; here it writes it into a staging folder instead (by the run folder
        # it is given), which becomes checkpoint-N only when whole, so --resume never meets a partial checkpoint. What
        # transformers does with the run folder itself (finding the best checkpoint, rotating, pushing) is done here,
        # on the run folder, once the checkpoint is in it.
        run_dir = Path(self._get_output_dir(trial))
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        try:
            with staged_by_every_process(folder, self.accelerator, self.args.should_save) as staging:
                self._staging_run_dir = staging.parent
                try:
                    super()._save_checkpoint(model, trial)
                finally:
                    self._staging_run_dir = None
                best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
                if self.state.best_global_step and (best == folder or best.is_dir()) \
                        and self.state.best_model_checkpoint != str(best):
                    self.state.best_model_checkpoint = str(best)
                    if self.args.should_save:
                        self.state.save_to_json(str(staging / "trainer_state.json"))
        except OSError as error:
            previous = get_last_checkpoint(str(run_dir))
            kept = f"{previous} is intact" if previous else "no earlier checkpoint exists"
            raise OSError(f"Saving {folder.name} failed ({error}); the partial folder was removed and {kept}. "
                          "Free disk space, then continue with --resume.") from error
        if self.args.should_save:
            rotate_checkpoints(str(run_dir), self.args.save_total_limit, self.state.best_model_checkpoint,
                               use_mtime=True)
        if self.args.push_to_hub:
            super()._push_from_checkpoint(str(folder))

    def _get_output_dir(self, trial) -> str:
        return str(self._staging_run_dir) if self._staging_run_dir else super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if not self._staging_run_dir:  # a staged checkpoint is pushed once it is in place
            super()._push_from_checkpoint(checkpoint_folder)

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

    def __init__(self, tokenizer, validation_rows: list[dict] | None, sample_prompt: str | None = None,
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
            print(f"\nstep {state.global_step} sample: {self.sample(model, 100)!r}")

    def sample(self, model, max_new_tokens: int = 200) -> str:
        """What the model makes of the sample prompt: a sampled continuation for text; for prompt/target data the
        greedy answers to it, or (by default) to the first validation prompts, one per line with their targets."""
        if not self.validation_rows:
            return sample(model, self.tokenizer, "\n" if self.sample_prompt is None else self.sample_prompt,
                          max_new_tokens)
        rows = self.validation_rows[:4] if self.sample_prompt is None else [
            {"prompt": self.sample_prompt, "target": None, **{key: self.validation_rows[0][key]
                                                              for key in ("reversed", "scratchpad")
                                                              if key in self.validation_rows[0]}}]
        longest = max(len(continuation(row)) for row in self.validation_rows[:4])
        answers = greedy_answers(model, self.tokenizer, [row["prompt"] for row in rows],
                                 max_new_tokens=max(16, longest + 1), progress=False)
        return "\n".join(row["prompt"] + read_answer(row, answer)
                         + ("" if row["target"] is None else f"   (target {row['target']})")
                         for row, answer in zip(rows, answers))


def end_of_run_sample(trainer: Trainer) -> str:
    """The sample `mtlm train` prints when a run ends (EvaluationExtras.sample of the trained model)."""
    extras = next(callback for callback in trainer.callback_handler.callbacks
                  if isinstance(callback, EvaluationExtras))
    return extras.sample(trainer.model)


def check_sample_prompt(tokenizer, prompt: str | None) -> None:
    """Refuse, before training, a sample prompt the run's tokenizer cannot encode (the arithmetic vocabulary has no
    unknown token, so a character outside it fails)."""
    if prompt is None or encodes(tokenizer, prompt):
        return
    missing = "".join(sorted(character for character in set(prompt) if not encodes(tokenizer, character)))
    raise UsageError(f"--sample-prompt {prompt!r} cannot be encoded by this run's tokenizer, which has no id for "
                     f"{missing!r}. Give a prompt written with the training data's characters, or leave it out.")


def encodes(tokenizer, text: str) -> bool:
    try:
        tokenizer(text, add_special_tokens=False)
    except Exception:  # noqa: BLE001 (the tokenizers library raises a bare Exception for a word it has no id for)
        return False
    return True


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


class RunStart(TrainerCallback):
    """Says as training starts, on the main process, how many processes share each step (so that a launcher that
    started fewer than asked is seen at once) and where the experiment trackers write."""

    def __init__(self, callbacks: list[TrainerCallback]):
        self.callbacks = callbacks  # the Trainer's own list: its reporters open their logs before this runs

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        processes = args.world_size
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
        print(f"mtlm: {processes} process{'es' if processes > 1 else ''} x {args.per_device_train_batch_size} "
              f"sequences x {args.gradient_accumulation_steps} accumulation = {per_step} sequences per step")
        for callback in self.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir:
                print(f"mtlm: TensorBoard logs in {callback.logging_dir} (tensorboard --logdir {callback.logging_dir})")
            elif isinstance(callback, TrackioCallback):
                from trackio.utils import TRACKIO_DIR

                print(f"mtlm: trackio logs in {TRACKIO_DIR}, project {args.project!r} "
                      f"(trackio show --project {args.project})")


def describe_hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


@contextmanager
def staged_by_every_process(destination: Path, processes, stages: bool, merge: bool = False) -> Iterator[Path]:
    """`staged` for a save every process takes part in (under torchrun each writes its own files, or gathers
    weights): the process that `stages` (the one that saves, per node with save_on_each_node) owns the staging
    folder, the others write into the same path, and it is renamed into place once all of them are done."""
    if stages:
        with staged(destination, folder=True, merge=merge, shared=True) as staging:
            processes.wait_for_everyone()
            yield staging
            processes.wait_for_everyone()
    else:
        processes.wait_for_everyone()
        yield staging_path(destination, merge)
        processes.wait_for_everyone()


def save_final_model(trainer: Trainer, output_dir: Path) -> None:
    """The final model's files and the Trainer's state, staged, then moved into the output folder beside the run's
    other files."""
    with staged_by_every_process(output_dir, trainer.accelerator, trainer.args.should_save, merge=True) as staging:
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            trainer.state.save_to_json(str(staging / "trainer_state.json"))


class RunFolderSaved(TrainerCallback):
    """Tells the run folder when this run has saved its first checkpoint (then an earlier run it replaces goes)."""

    def __init__(self, folder: RunFolder | None):
        self.folder = folder

    def on_save(self, args, state, control, **kwargs):
        if self.folder is not None:
            self.folder.saved()


# experiment trackers that log locally with no account (the `track` extra), each also the module it needs
LOCAL_TRACKERS = ("tensorboard", "trackio")


def training_arguments(training: dict) -> TrainingArguments:
    """The Trainer's arguments; a value TrainingArguments refuses is named as a run-config mistake."""
    try:
        arguments = TrainingArguments(**training)
    except ValueError as error:
        raise UsageError(f"The training section does not work as TrainingArguments: {error}") from None
    for tracker in arguments.report_to:
        if tracker in LOCAL_TRACKERS and importlib.util.find_spec(tracker) is None:
            raise UsageError(f"training.report_to names {tracker}, which is not installed: pip install "
                             f"'mtlm[track]' (or {tracker}), or drop it from report_to.")
    return arguments


def check_compiler(arguments: TrainingArguments) -> None:
    """torch.compile on the CPU builds its kernels with a C++ compiler: where there is none, say so before anything
    is built, rather than fail at the first step."""
    if not arguments.torch_compile or arguments.device.type != "cpu":
        return
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise UsageError("training.torch_compile: true on the CPU needs a C++ compiler (g++ or clang++), and none is "
                         "found: install one (apt install g++), point CXX at one, or "
                         "--set training.torch_compile=false (the same training, about 1.25x slower).") from None


def train(run: dict, overwrite: bool = False, resume: bool = False, sample_prompt: str | None = None,
          callbacks: tuple[TrainerCallback, ...] = ()) -> Trainer:
    """Run the training a validated run config describes (with any extra Trainer `callbacks`); returns the
    Trainer. Everything (arguments, data, tokenizer, model) is built before the output folder is touched, so a run
    that cannot start leaves it as it was; an earlier run that --overwrite replaces is removed only once this one has
    saved."""
    training = training_settings(run["training"])
    output_dir = Path(training["output_dir"])
    check_output_dir(output_dir, overwrite, resume)
    resume_from = str(last_complete_checkpoint(output_dir, required_checkpoint_files(training))) if resume else None
    arguments = training_arguments(training)
    check_compiler(arguments)
    # Under torchrun / accelerate launch every process runs this; the main one builds the data (and datasets' cache)
    # first and owns the folder, the others then read them.
    processes = PartialState(cpu=training["use_cpu"])
    set_seed(training.get("seed", 42))

    init_from = run["model"].get("init_from")
    stages = growth_stages(run["growth"], training.get("max_steps"))
    if stages and processes.num_processes > 1:
        raise UsageError("growth inside a run works in one process: it rebuilds the layer list the data-parallel "
                         "wrapper holds. Train the stages one by one with mtlm grow, or drop the growth section.")
    with processes.main_process_first():
        texts = load_texts(run["data"])
        tokenizer = build_tokenizer(run["tokenizer"], texts, init_from)
        check_sample_prompt(tokenizer, sample_prompt)
        config = build_model_config(run["model"], tokenizer)
        prompt_target = run["data"].get("source") == "arithmetic"
        if not prompt_target:
            check_block_size(run["data"].get("block_size", 128), config)
        datasets = build_datasets(run["data"], texts, tokenizer)
    check_first_stage(stages, config)
    if resume_from and stages:  # the checkpoint's config has the depth the run had grown to, and its gates
        model = build_model(AutoConfig.from_pretrained(resume_from))
    else:
        model = build_model(config, init_from)
    batches = collator(tokenizer)
    train_collator = RandomPositionOffsets(batches, config.max_position_embeddings) \
        if run["data"].get("random_position_offsets") else None
    balance = run["data"].get("balance_layouts", 0)
    sample_weights = layout_weights(texts["train"]["prompt"], balance) if balance else None
    evaluation_split = "validation" if "validation" in datasets else None
    validation_rows = texts["validation"].to_list() if prompt_target and evaluation_split else None

    folder = RunFolder(output_dir, overwrite, resume) if processes.is_main_process else None
    if folder is not None:
        folder.start()
    processes.wait_for_everyone()
    try:
        if folder is not None:
            run_config.save(run, output_dir)
        trainer = MtlmTrainer(
            model=model,
            args=arguments,
            train_dataset=datasets["train"],
            eval_dataset=datasets[evaluation_split] if evaluation_split else None,
            data_collator=batches,
            train_collator=train_collator,
            train_sample_weights=sample_weights,
            optimizer_settings=run["optimizer"],
            processing_class=tokenizer,
            callbacks=[EvaluationExtras(tokenizer, validation_rows, sample_prompt), TrainingEnvironment(),
                       RunFolderSaved(folder), *early_stopping(run), *callbacks],
        )
        trainer.add_callback(RunStart(trainer.callback_handler.callbacks))
        if stages:
            trainer.add_callback(GrowthSchedule(stages, lambda grown: set(trainer.get_decay_parameter_names(grown))))
        try:
            trainer.train(resume_from_checkpoint=resume_from)
            trainer.read_device_counters()
        except NonFiniteLossError as error:
            last = get_last_checkpoint(str(output_dir))
            kept = f"The last good checkpoint is {last} (continue with --resume after lowering the learning rate)." \
                if last else "No checkpoint was saved before it."
            raise NonFiniteLossError(f"{error} Training stopped. {kept}") from None
        if evaluation_split:
            trainer.evaluate()
        if "test" in datasets:  # scored once, at the end, by the final (with load_best_model_at_end: the best) model
            trainer.remove_callback(EarlyStoppingCallback)  # it watches the validation loss, and training is over
            trainer.evaluate(datasets["test"], metric_key_prefix="test")
        save_final_model(trainer, output_dir)
    except BaseException:
        if folder is not None:
            folder.failed()
        raise
    if folder is not None:
        folder.saved()
        plot_losses(trainer.state.log_history, output_dir / "loss.png")
    return trainer


def early_stopping(run: dict) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback, when the run config has an early_stopping section."""
    settings = run.get("early_stopping") or {}
    if not settings:
        return []
    return [EarlyStoppingCallback(early_stopping_patience=settings["patience"],
                                  early_stopping_threshold=settings.get("threshold", 0.0))]


def required_checkpoint_files(training: dict) -> tuple:
    """The files a complete checkpoint of this run holds (no optimizer state with save_only_model)."""
    if training.get("save_only_model"):
        return TRAINER_CHECKPOINT_FILES[:2]
    return TRAINER_CHECKPOINT_FILES
