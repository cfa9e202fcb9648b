"""What a run shows a person: the loss curves, and text sampled from the model."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import CompileConfig  # noqa: E402

from ..errors import UsageError  # noqa: E402
from ..files import staged  # noqa: E402


def check_sampling(max_new_tokens: int = 0, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """Refuse decoding settings that would silently mean something else, quoting the value given."""
    if max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: ask for 0 or more new tokens.")
    if temperature < 0:
        raise UsageError(f"--temperature {temperature}: give 0 for greedy decoding or a positive temperature.")
    if top_k < 0:
        raise UsageError(f"--top-k {top_k}: give 0 to keep every token or a positive number of tokens.")
    if not 0 < top_p <= 1:
        raise UsageError(f"--top-p {top_p}: give a probability in (0, 1]; 1 keeps every token.")


def unknown_characters(tokenizer, text: str) -> list[str]:
    """The characters of `text` the tokenizer turns into its unknown token (none for byte-level tokenizers)."""
    if tokenizer.unk_token_id is None:
        return []
    return sorted(character for character in set(text)
                  if tokenizer.unk_token_id in tokenizer(character, add_special_tokens=False)["input_ids"])


def compiled_decoding() -> dict:
    """`generate()` arguments that decode with a static KV cache and a torch.compiled step, on any device (transformers
    compiles by itself only on accelerators). The first call compiles (seconds to a minute); later calls of the same
    shapes reuse it."""
    compile_config = CompileConfig(fullgraph=True, mode="default")
    compile_config._compile_all_devices = True  # transformers' switch for compiling on the CPU too
    return {"cache_implementation": "static", "compile_config": compile_config}


def sample(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 50,
           top_p: float = 1.0, compiled: bool = False) -> str:
    """The prompt and its continuation (never past the model's context): sampled, or greedy when `temperature` is
    0; `compiled` decodes through `compiled_decoding()`. An empty prompt starts from the tokenizer's bos token. Bytes
    that are not UTF-8 show as U+FFFD."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    if inputs["input_ids"].shape[1] == 0:
        if tokenizer.bos_token_id is None:
            raise UsageError("The prompt is empty and the tokenizer has no bos token to start from: give a prompt.")
        inputs = {"input_ids": torch.tensor([[tokenizer.bos_token_id]], device=model.device)}
    max_new_tokens = min(max_new_tokens, model.config.max_position_embeddings - inputs["input_ids"].shape[1])
    if max_new_tokens <= 0:  # the prompt fills the context
        return tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p} if temperature > 0 \
        else {"do_sample": False}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                **sampling, **(compiled_decoding() if compiled else {}))
    model.train(was_training)
    return printable(tokenizer.decode(output[0], skip_special_tokens=True))


def printable(text: str) -> str:
    """`text` with the bytes a byte model generated that are not UTF-8 (decoded as lone surrogates) shown as U+FFFD,
    so that it prints and saves anywhere."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


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
    with staged(path) as partial:
        figure.savefig(partial, dpi=120)
    plt.close(figure)
