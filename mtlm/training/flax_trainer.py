"""`mtlm train CONFIG --backend flax`: the same run config trained by the Flax twin with optax on a device mesh.

The mesh has a `data` axis (batch split across devices, MTLM2's 1-D data mesh when it is the only one) and an `fsdp`
axis (batch split further, and each weight matrix sharded along its larger dimension). The train step is one
jit-compiled function. The recipe is the PyTorch Trainer's: AdamW with decoupled weight decay on matrices only (or,
with `optimizer.name: muon`, torch.optim.Muon's update on the layers' matrices), the Trainer's schedules (warm-up,
then cosine to `min_lr_rate`·lr, linear, constant or warmup-stable-decay), gradient clipping; `bf16` computes in
bfloat16 (float32 master weights), `gradient_checkpointing` rematerialises each layer. Checkpoints are the usual folders (safetensors in
PyTorch names) plus the optimizer state, so a run resumes on the same loss curve and every folder loads in PyTorch.
"""

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm
from transformers import TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from ..data.shards import TokenBlocks
from ..errors import UsageError
from ..families import family_of
from ..files import read_json, staged
from ..modeling.flax_mtlm import FlaxMtlmForCausalLM, read_safetensors
from . import run_config
from .datasets import build_datasets, load_texts
from .defaults import training_settings
from .model import build_model_config
from .reports import plot_losses
from .run_folder import RunFolder, check_output_dir, last_complete_checkpoint
from .tokenizer import build_tokenizer

OPTIMIZER_STATE = "flax_optimizer_state.npz"  # the optax state's leaves, in tree order
FLAX_CHECKPOINT_FILES = ("trainer_state.json", "model.safetensors", OPTIMIZER_STATE)
SCHEDULES = ("cosine_with_min_lr", "cosine", "linear", "constant", "constant_with_warmup", "warmup_stable_decay")


def make_mesh(data: int | None = None, fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over the first data * fsdp devices (all devices on the data axis by default)."""
    devices = jax.devices()
    data = data or len(devices) // fsdp
    if data * fsdp > len(devices) or data < 1 or fsdp < 1:
        raise UsageError(f"A mesh of data={data} x fsdp={fsdp} needs {data * fsdp} devices; there are {len(devices)} "
                         f"({devices[0].platform}). Set flax.data_parallel / flax.fsdp to fit.")
    return Mesh(np.array(devices[: data * fsdp]).reshape(data, fsdp), ("data", "fsdp"))


def parameter_sharding(mesh: Mesh, value: jax.Array) -> NamedSharding:
    """Shard a matrix's larger dimension over `fsdp` when it divides evenly; replicate everything else."""
    fsdp = mesh.shape["fsdp"]
    if value.ndim >= 2 and fsdp > 1:
        for axis in sorted(range(value.ndim), key=lambda axis: -value.shape[axis]):
            if value.shape[axis] % fsdp == 0:
                spec = [None] * value.ndim
                spec[axis] = "fsdp"
                return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())


def steps_of(value, max_steps: int) -> int:
    """A step count or interval as TrainingArguments reads it: below 1, a fraction of the run (rounded up)."""
    return math.ceil(value * max_steps) if 0 < value < 1 else int(value)


def learning_rate_schedule(training: dict) -> optax.Schedule:
    """The Trainer's schedules, as optax functions of the optimizer step."""
    peak, steps = training["learning_rate"], training["max_steps"]
    warmup = steps_of(training.get("warmup_steps", 0), steps)
    kind = training["lr_scheduler_type"]
    if kind not in SCHEDULES:
        raise UsageError(f"lr_scheduler_type={kind!r} is not available with --backend flax; use one of "
                         f"{', '.join(SCHEDULES)}.")
    if kind == "warmup_stable_decay":
        return warmup_stable_decay(peak, steps, warmup, **(training.get("lr_scheduler_kwargs") or {}))
    if kind in ("cosine", "cosine_with_min_lr"):
        options = training.get("lr_scheduler_kwargs") or {} if kind == "cosine_with_min_lr" else {}
        floor = options["min_lr"] if "min_lr" in options else options.get("min_lr_rate", 0.0) * peak
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=floor)
    if kind == "constant" or not warmup:
        warmup = 0  # transformers' constant schedule has no warm-up
    warm = optax.linear_schedule(0.0, peak, warmup) if warmup else optax.constant_schedule(peak)
    after = optax.linear_schedule(peak, 0.0, steps - warmup) if kind == "linear" else optax.constant_schedule(peak)
    return optax.join_schedules([warm, after], [warmup])


def warmup_stable_decay(peak: float, steps: int, warmup: int, num_decay_steps: int, num_stable_steps: int | None = None,
                        warmup_type: str = "linear", decay_type: str = "cosine", min_lr_ratio: float = 0.0,
                        num_cycles: float = 0.5) -> optax.Schedule:
    """transformers' get_wsd_schedule: warm up to `peak`, hold it, then decay over `num_decay_steps` to
    min_lr_ratio·peak."""
    stable = steps - warmup - num_decay_steps if num_stable_steps is None else num_stable_steps
    shapes = {"linear": lambda progress: progress, "1-sqrt": lambda progress: 1 - jnp.sqrt(1 - progress),
              "cosine": lambda progress: 0.5 * (1 - jnp.cos(jnp.pi * progress))}
    decays = {"linear": lambda progress: 1 - progress, "1-sqrt": lambda progress: 1 - jnp.sqrt(progress),
              "cosine": lambda progress: 0.5 * (1 + jnp.cos(jnp.pi * num_cycles * 2 * progress))}
    for name, value, known in (("warmup_type", warmup_type, shapes), ("decay_type", decay_type, decays)):
        if value not in known:
            raise UsageError(f"lr_scheduler_kwargs.{name}={value!r}: choose one of {', '.join(known)}.")

    def schedule(step):
        warming = shapes[warmup_type](step / max(1, warmup)) * (1 - min_lr_ratio) + min_lr_ratio
        progress = jnp.clip((step - warmup - stable) / max(1, num_decay_steps), 0, 1)
        decaying = decays[decay_type](progress) * (1 - min_lr_ratio) + min_lr_ratio
        factor = jnp.select([step < warmup, step < warmup + stable, step < warmup + stable + num_decay_steps],
                            [jnp.maximum(warming, 0.0), 1.0, jnp.maximum(decaying, 0.0)], min_lr_ratio)
        return peak * factor

    return schedule


def newton_schulz(matrix: jax.Array, coefficients: tuple[float, float, float], steps: int, eps: float) -> jax.Array:
    """torch.optim.Muon's orthogonalisation of a 2-D update: bfloat16 values, each product and sum accumulated in
    float32 and rounded once, as torch's bfloat16 addmm does."""
    def rounded(value):
        return value.astype(jnp.bfloat16).astype(jnp.float32)

    def product(left, right):
        return jnp.matmul(left, right, precision=jax.lax.Precision.HIGHEST)

    a, b, c = coefficients
    tall = matrix.shape[0] > matrix.shape[1]
    x = rounded(matrix.T if tall else matrix)
    x = rounded(x / jnp.maximum(rounded(jnp.linalg.norm(x)), eps))
    for _ in range(steps):
        gram = rounded(product(x, x.T))
        x = rounded(a * x + product(rounded(b * gram + c * product(gram, gram)), x))
    return (x.T if tall else x).astype(matrix.dtype)


def scale_by_muon(momentum: float, coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
                  steps: int = 5, eps: float = 1e-7) -> optax.GradientTransformation:
    """torch.optim.Muon's update direction for (out, in) weights: the gradient's Nesterov momentum, orthogonalised, then
    scaled by 0.2·sqrt(max(out, in)) so that its RMS matches AdamW's (adjust_lr_fn="match_rms_adamw")."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(gradients, buffers, params=None):
        buffers = jax.tree.map(lambda buffer, gradient: buffer + (1 - momentum) * (gradient - buffer), buffers,
                               gradients)
        directions = jax.tree.map(
            lambda gradient, buffer: 0.2 * math.sqrt(max(gradient.shape)) * newton_schulz(
                gradient + momentum * (buffer - gradient), coefficients, steps, eps), gradients, buffers)
        return directions, buffers

    return optax.GradientTransformation(init, update)


def is_hidden_matrix(path, value: jax.Array) -> bool:
    """The weights Muon trains in PyTorch (mtlm.training.optimizers): the linear layers' matrices inside the layers."""
    return value.ndim == 2 and any(getattr(key, "key", None) == "layers" for key in path)


def make_optimizer(training: dict, params, schedule: optax.Schedule,
                   optimizer: dict | None = None) -> optax.GradientTransformation:
    """Clip, then AdamW with weight decay on matrices (ndim >= 2) only; with `optimizer.name: muon` the layers'
    matrices take Muon's update instead, decayed, on the schedule scaled to `muon_learning_rate`."""
    optimizer = optimizer or {}
    adamw = optax.adamw(schedule, b1=training["adam_beta1"], b2=training["adam_beta2"],
                        eps=training.get("adam_epsilon", 1e-8), weight_decay=training["weight_decay"],
                        mask=lambda tree: jax.tree.map(lambda value: value.ndim >= 2, tree))
    if optimizer.get("name", "adamw") == "adamw":
        return optax.chain(optax.clip_by_global_norm(training["max_grad_norm"]), adamw)
    muon_scale = optimizer.get("muon_learning_rate", training["learning_rate"]) / training["learning_rate"]
    muon = optax.chain(scale_by_muon(optimizer.get("momentum", 0.95)),
                       optax.add_decayed_weights(training["weight_decay"]),
                       optax.scale_by_learning_rate(lambda step: muon_scale * schedule(step)))
    labels = jax.tree_util.tree_map_with_path(lambda path, value: "muon" if is_hidden_matrix(path, value) else "adamw",
                                              params)
    return optax.chain(optax.clip_by_global_norm(training["max_grad_norm"]),
                       optax.multi_transform({"muon": muon, "adamw": adamw}, labels))


def load_balancing_loss(router_logits: list[jax.Array], num_experts: int, top_k: int) -> jax.Array:
    """Mixtral's auxiliary loss over all layers' router logits (tokens, experts), as transformers computes it."""
    logits = jnp.concatenate(router_logits, axis=0).astype(jnp.float32)
    probabilities = jax.nn.softmax(logits, axis=-1)
    _, selected = jax.lax.top_k(probabilities, top_k)
    expert_mask = jax.nn.one_hot(selected, num_experts)
    tokens_per_expert = expert_mask.mean(axis=0)
    return num_experts * jnp.sum(tokens_per_expert * probabilities.mean(axis=0)[None, :])


def next_token_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits[:, :-1] against labels[:, 1:], ignoring -100."""
    logits, labels = logits[:, :-1], labels[:, 1:]
    valid = labels != -100
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(losses * valid) / jnp.maximum(valid.sum(), 1)


class FlaxTrainer:
    """Holds the split model (graph, parameters, other state), the optimizer state and the compiled steps."""

    def __init__(self, model: FlaxMtlmForCausalLM, training: dict, mesh: Mesh, optimizer: dict | None = None):
        self.mesh, self.training, self.config = mesh, training, model.config
        self.routes_experts = model.routes_experts  # then Mixtral's load-balancing loss is added
        self.seed = training.get("seed", 42)
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        self.params = jax.device_put(params, jax.tree.map(lambda value: parameter_sharding(mesh, value), params))
        self.rest = jax.device_put(self.rest, NamedSharding(mesh, P()))
        self.schedule = learning_rate_schedule(training)
        self.optimizer = make_optimizer(training, self.params, self.schedule, optimizer)
        self.opt_state = self.optimizer.init(self.params)
        self.batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
        self.train_step = jax.jit(self._train_step, donate_argnums=(0, 1, 2))
        self.eval_step = jax.jit(self._eval_step)

    def _loss(self, params, rest, batch, dropout_key):
        model = nnx.merge(self.graphdef, params, rest)
        output, intermediates = nnx.capture(model, nnx.Intermediate)(
            batch["input_ids"], attention_mask=batch["attention_mask"], dropout_key=dropout_key)
        loss = next_token_loss(output.logits, batch["labels"])
        aux_loss = jnp.zeros(())
        if self.routes_experts:
            router_logits = [value for _, value in sorted(nnx.to_flat_state(intermediates))]
            router_logits = [value.get_value() if hasattr(value, "get_value") else value for value in router_logits]
            router_logits = [value[0] if isinstance(value, tuple) else value for value in router_logits]
            aux_loss = load_balancing_loss(router_logits, self.config.num_local_experts,
                                           self.config.num_experts_per_tok)
            loss = loss + self.config.router_aux_loss_coef * aux_loss
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return loss, (rest, aux_loss)

    def _train_step(self, params, opt_state, rest, batch, step):
        dropout_key = jax.random.fold_in(jax.random.key(self.seed), step)  # a resumed run draws the same masks
        (loss, (rest, aux_loss)), grads = jax.value_and_grad(self._loss, has_aux=True)(params, rest, batch,
                                                                                      dropout_key)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, rest, {"loss": loss, "grad_norm": optax.tree.norm(grads), "aux_loss": aux_loss}

    def _eval_step(self, params, rest, batch):
        model = nnx.merge(self.graphdef, params, rest)
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        valid = labels != -100
        losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], jnp.where(valid, labels, 0))
        return jnp.sum(losses * valid), valid.sum()

    def step(self, batch: dict, step: int) -> dict:
        batch = jax.device_put(batch, self.batch_sharding)
        self.params, self.opt_state, self.rest, metrics = self.train_step(self.params, self.opt_state, self.rest, batch,
                                                                          step)
        return metrics

    def evaluate(self, batches) -> float:
        total, count = 0.0, 0
        for batch in batches:
            loss_sum, tokens = self.eval_step(self.params, self.rest, jax.device_put(batch, self.batch_sharding))
            total, count = total + float(loss_sum), count + int(tokens)
        return total / max(count, 1)

    def model(self) -> FlaxMtlmForCausalLM:
        return nnx.merge(self.graphdef, jax.device_get(self.params), jax.device_get(self.rest))

    def save(self, folder: Path, tokenizer, state: dict, optimizer: bool = True) -> None:
        """Write the PyTorch-loadable model, the tokenizer, trainer_state.json and (with `optimizer`) the optimizer
        state into `folder`."""
        self.model().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if optimizer:
            with open(folder / OPTIMIZER_STATE, "wb") as handle:
                np.savez(handle, *[np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(self.opt_state))])
        (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))

    def restore(self, folder: Path) -> None:
        model = FlaxMtlmForCausalLM.from_pretrained(folder)
        _, params, _ = nnx.split(model, nnx.Param, ...)
        self.params = jax.device_put(params, jax.tree.map(lambda value: parameter_sharding(self.mesh, value), params))
        with np.load(folder / OPTIMIZER_STATE) as stored:
            leaves = [stored[f"arr_{index}"] for index in range(len(stored.files))]
        template = jax.tree.leaves(self.opt_state)
        if len(leaves) != len(template):
            raise ValueError(f"{folder / OPTIMIZER_STATE} does not fit this run's optimizer: resume with the config "
                             "that wrote it.")
        self.opt_state = jax.tree.unflatten(jax.tree.structure(self.opt_state), [
            jax.device_put(jnp.asarray(leaf, current.dtype), current.sharding) for leaf, current in zip(leaves, template)
        ])


def batches(rows: np.ndarray, batch_size: int, seed: int, start_step: int, steps: int):
    """Batches of packed blocks for optimizer steps start_step .. steps - 1: the blocks in a seeded order per epoch,
    so that a resumed run sees the same batches as an uninterrupted one."""
    per_epoch = len(rows) // batch_size
    if per_epoch == 0:
        raise ValueError(f"The training split has {len(rows)} blocks, fewer than one batch of {batch_size}.")
    order_epoch, order = None, None
    for step in range(start_step, steps):
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:
            order_epoch, order = epoch, np.random.default_rng(seed + epoch).permutation(len(rows))
        block = rows[np.sort(order[position * batch_size : (position + 1) * batch_size])].astype(np.int32)
        yield {"input_ids": block, "attention_mask": np.ones_like(block), "labels": block}


def evaluation_batches(rows: np.ndarray, batch_size: int):
    """Whole batches of the validation blocks (a ragged last batch is padded with ignored rows)."""
    for start in range(0, len(rows), batch_size):
        block = np.asarray(rows[start : start + batch_size], dtype=np.int32)
        labels = block.copy()
        if len(block) < batch_size:
            padding = batch_size - len(block)
            block = np.concatenate([block, np.zeros((padding, block.shape[1]), block.dtype)])
            labels = np.concatenate([labels, np.full((padding, labels.shape[1]), -100, labels.dtype)])
        yield {"input_ids": block, "attention_mask": np.ones_like(block), "labels": labels}


def packed_rows(dataset) -> np.ndarray:
    """The packed blocks as a (blocks, block_size) array: a memory map for a token store (read as indexed)."""
    if isinstance(dataset, TokenBlocks):
        return dataset.rows()
    return np.asarray(dataset.with_format("numpy")["input_ids"], dtype=np.int32)


def train_flax(run: dict, overwrite: bool = False, resume: bool = False) -> dict:
    """Run the training a validated run config describes with the Flax twin; returns the final trainer state."""
    # the Trainer's own default where the run config and mtlm's recipe are silent, as the PyTorch backend has it
    training = {"learning_rate": TrainingArguments.learning_rate, **training_settings(run["training"])}
    flax_options = run.get("flax") or {}
    if run["data"].get("source") == "arithmetic":
        raise UsageError("--backend flax trains on text (packed blocks); prompt/target data trains with the PyTorch "
                         "backend.")
    if run.get("early_stopping"):
        raise UsageError("--backend flax has no early stopping: drop the early_stopping section, or train with the "
                         "PyTorch backend.")
    if not training.get("max_steps") or training["max_steps"] < 1:
        raise UsageError("--backend flax needs training.max_steps.")
    if training.get("gradient_accumulation_steps", 1) != 1:
        raise UsageError("--backend flax does not accumulate gradients: set gradient_accumulation_steps to 1 and "
                         "per_device_train_batch_size to the batch you want per device.")
    output_dir = Path(training["output_dir"])
    check_output_dir(output_dir, overwrite, resume)
    last = last_complete_checkpoint(output_dir, FLAX_CHECKPOINT_FILES) if resume else None
    # The data first: a shard folder is tokenized by forked processes, which must not inherit JAX's threads.
    init_from = run["model"].get("init_from")
    texts = load_texts(run["data"])
    tokenizer = build_tokenizer(run["tokenizer"], texts, init_from)
    config = build_model_config(run["model"], tokenizer)
    datasets = build_datasets(run["data"], texts, tokenizer)
    mesh = make_mesh(flax_options.get("data_parallel"), flax_options.get("fsdp", 1))
    devices = mesh.devices.size
    global_batch = training.get("per_device_train_batch_size", 8) * devices
    eval_batch = training.get("per_device_eval_batch_size", 8) * devices
    options = {"dtype": jnp.bfloat16 if training.get("bf16") else jnp.float32,
               "remat": bool(training.get("gradient_checkpointing"))}
    seed = training.get("seed", 42)
    model = FlaxMtlmForCausalLM.from_config(config, seed=seed, **options)
    if init_from:
        model.load_state_dict(read_safetensors(Path(init_from)))
    trainer = FlaxTrainer(model, training, mesh, run.get("optimizer"))

    state = {"global_step": 0, "max_steps": training["max_steps"], "log_history": [], "total_flos": 0.0,
             "num_input_tokens_seen": 0, "train_batch_size": global_batch,
             "stateful_callbacks": {"TrainingEnvironment": {"args": {
                 "hardware": f"{devices} x {jax.devices()[0].device_kind} ({jax.default_backend()})",
                 # data-parallel replicas, as processes are under torchrun: each takes per_device_train_batch_size
                 "processes": devices, "software": f"jax {jax.__version__}, flax (mtlm Flax trainer)"},
                 "attributes": {}}}}
    if last is not None:
        trainer.restore(last)
        state = read_json(last / "trainer_state.json", "trainer state")
        print(f"Resuming from {last} at step {state['global_step']}")

    folder = RunFolder(output_dir, overwrite, resume)
    folder.start()
    try:
        run_config.save(run, output_dir)
        run_steps(trainer, state, training, datasets, tokenizer, output_dir, folder, global_batch, eval_batch)
    except BaseException:
        folder.failed()
        raise
    folder.saved()
    plot_losses(state["log_history"], output_dir / "loss.png")
    return state


def run_steps(trainer: FlaxTrainer, state: dict, training: dict, datasets, tokenizer, output_dir: Path,
              folder: RunFolder, global_batch: int, eval_batch: int) -> None:
    """The training loop from `state["global_step"]` to max_steps: logs, evaluations and checkpoints into `state`
    and `output_dir`, then the final model."""
    config, seed = trainer.config, trainer.seed
    train_rows = packed_rows(datasets["train"])
    validation_rows = packed_rows(datasets["validation"]) if "validation" in datasets else None
    block = train_rows.shape[1]
    flops_per_step = 3 * family_of(config).flops_per_token(config, block) * block * global_batch
    max_steps = training["max_steps"]
    logging_steps = max(1, steps_of(training.get("logging_steps", 50), max_steps))
    eval_every = max(1, steps_of(training.get("eval_steps") or logging_steps, max_steps)) \
        if training.get("eval_strategy") == "steps" else 0
    save_every = max(1, steps_of(training.get("save_steps", 500), max_steps)) \
        if training.get("save_strategy", "steps") == "steps" else 0
    window, window_start = [], time.perf_counter()
    progress = tqdm(total=training["max_steps"], initial=state["global_step"], desc="Flax training",
                    disable=training.get("disable_tqdm", False))
    for batch in batches(train_rows, global_batch, seed, state["global_step"], training["max_steps"]):
        metrics = trainer.step(batch, state["global_step"])
        state["global_step"] += 1
        state["num_input_tokens_seen"] += int(batch["input_ids"].size)
        state["total_flos"] += flops_per_step
        window.append(metrics)
        step = state["global_step"]
        progress.update(1)
        if step % logging_steps == 0 or step == training["max_steps"]:
            losses = [float(item["loss"]) for item in window]  # waits for the steps dispatched so far
            elapsed = time.perf_counter() - window_start
            entry = {"loss": float(np.mean(losses)),
                     "grad_norm": float(window[-1]["grad_norm"]),
                     "learning_rate": float(trainer.schedule(step - 1)),
                     "tokens_per_second": len(window) * batch["input_ids"].size / elapsed,
                     "flos": state["total_flos"], "num_input_tokens_seen": state["num_input_tokens_seen"],
                     "step": step}
            if trainer.routes_experts:
                entry["aux_loss"] = float(np.mean([float(item["aux_loss"]) for item in window]))
            state["log_history"].append(entry)
            progress.write(str({key: round(value, 4) if isinstance(value, float) else value
                                for key, value in entry.items()}))
            window, window_start = [], time.perf_counter()
        if validation_rows is not None and eval_every and (step % eval_every == 0 or step == training["max_steps"]):
            eval_loss = trainer.evaluate(evaluation_batches(validation_rows, eval_batch))
            entry = {"eval_loss": eval_loss, "eval_perplexity": math.exp(min(eval_loss, 50.0)),
                     "flos": state["total_flos"], "step": step}
            state["log_history"].append(entry)
            progress.write(str(entry))
            window_start = time.perf_counter()
        if save_every and step % save_every == 0 and step < training["max_steps"]:
            with staged(output_dir / f"checkpoint-{step}", folder=True) as staging:
                trainer.save(staging, tokenizer, state)
            folder.saved()
            rotate_checkpoints(str(output_dir), training.get("save_total_limit"))
    progress.close()
    with staged(output_dir, merge=True) as staging:  # the final model, beside the run's other files
        trainer.save(staging, tokenizer, state, optimizer=False)
