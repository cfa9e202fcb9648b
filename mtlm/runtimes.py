"""Checkpoints for the runtimes people run small models with, outside PyTorch:

- GGUF (llama.cpp, ollama, LM Studio) for the families llama.cpp runs: `mtlm_llama` as its `llama` architecture and a
  GPT-2-compatible `mtlm_gpt` as `gpt2`, in f32, f16 or q8_0, with the tokenizer inside the file, written with the
  `gguf` package (llama.cpp's own writer) the way llama.cpp's convert_hf_to_gguf.py lays it out;
- ONNX for onnxruntime, every family, with `torch.onnx.export`.

Each export is checked before it is kept: the GGUF file is loaded back with transformers' own GGUF reader and the ONNX
file run with onnxruntime, and their logits compared with the checkpoint's. A config a format cannot express is
refused by name before anything is written. Both need the `export` extra.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .convert import to_upstream
from .errors import UsageError
from .files import load_causal_lm, read_checkpoint_config, require_tokenizer, staged

GGUF_TYPES = ("f32", "f16", "q8_0")
# Largest difference from the checkpoint's logits an export may show, relative to the spread (std) of those logits.
# f32 and f16 files and ONNX graphs compute the same function up to rounding; q8_0 rounds every weight to 8 bits.
TOLERANCE = {"f32": 1e-4, "f16": 1e-2, "q8_0": 0.1, "onnx": 1e-4}


def require(module: str, flag: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"mtlm export {flag} needs the {module} package: pip install 'mtlm[export]'.")


def llama_cpp_architecture(model) -> tuple[str, torch.nn.Module]:
    """llama.cpp's name for the model's architecture and the upstream transformers model it is written from, or a
    UsageError naming what llama.cpp (through GGUF) cannot express."""
    config = model.config
    if config.model_type not in ("mtlm_llama", "mtlm_gpt"):
        raise UsageError(f"--gguf writes the families llama.cpp runs (mtlm_llama, GPT-2-compatible mtlm_gpt); this "
                         f"checkpoint is {config.model_type}: export it with --onnx or --native instead.")
    try:
        upstream = to_upstream(model)
    except ValueError as error:
        raise UsageError(f"--gguf: {error}") from None
    if config.model_type == "mtlm_llama":
        if config.attention_bias or config.mlp_bias:
            raise UsageError("--gguf: attention_bias/mlp_bias=True has no place in a GGUF llama (transformers' GGUF "
                             "reader builds a Llama without biases): export with --onnx or --native.")
        if (config.rope_parameters or {}).get("rope_type", "default") != "default":
            raise UsageError(f"--gguf: rope_type={config.rope_parameters['rope_type']!r} is not written to GGUF; "
                             "only default RoPE is.")
        return "llama", upstream
    if config.hidden_act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UsageError(f"--gguf: hidden_act={config.hidden_act!r}; llama.cpp's gpt2 uses the tanh GELU "
                         "(gelu_new): export with --onnx or --native.")
    if config.intermediate_size != 4 * config.hidden_size:
        raise UsageError(f"--gguf: intermediate_size={config.intermediate_size} is not 4 x hidden_size; GPT-2 in GGUF "
                         "has no field for its MLP width and is read back as 4 x hidden_size.")
    if config.max_position_embeddings != 1024:
        raise UsageError(f"--gguf: max_position_embeddings={config.max_position_embeddings}; transformers' GGUF "
                         "reader builds GPT-2 with 1,024 positions whatever the file says, so only that length reads "
                         "back (and is checked): export with --onnx or --native.")
    return "gpt2", upstream


def gguf_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[str], list[int]]:
    """The tokenizer as llama.cpp's byte-level BPE ("gpt2"): tokens in id order (bytes spelled with GPT-2's map;
    ids the model has beyond the tokenizer's as unused [PADn] tokens, as llama.cpp's converter writes them), merges,
    and token types; a UsageError for a tokenizer that has no such form."""
    import gguf

    if not tokenizer.is_fast:
        raise UsageError(f"--gguf: {type(tokenizer).__name__} is not a `tokenizers` tokenizer; it has no GGUF form.")
    structure = json.loads(tokenizer.backend_tokenizer.to_str())
    model, special = structure["model"], set(tokenizer.all_special_tokens)
    byte_level = (structure.get("pre_tokenizer") or {}).get("type") == "ByteLevel"
    if model["type"] not in ("BPE", "WordLevel"):
        raise UsageError(f"--gguf: a {model['type']} tokenizer has no GGUF form (llama.cpp's byte-level BPE): export "
                         "with --onnx.")
    vocab = {**model["vocab"], **{token: index for token, index in tokenizer.get_added_vocab().items()}}
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise UsageError("--gguf: the tokenizer's ids have gaps, which a GGUF token list cannot hold: export with "
                         "--onnx.")
    byte_symbol = bytes_to_unicode()
    tokens = [""] * len(vocab)
    for token, index in vocab.items():
        if token in special or byte_level:
            tokens[index] = token
        elif len(token.encode("utf-8")) == 1:  # a vocabulary of one-byte characters is a byte vocabulary
            tokens[index] = byte_symbol[token.encode("utf-8")[0]]
        else:
            raise UsageError(f"--gguf: the token {token!r} is not a single byte, and this tokenizer is not "
                             "byte-level: llama.cpp's tokenizers cannot reproduce it. Byte, byte-level BPE and "
                             "character vocabularies of one-byte characters (ASCII) export; export this one with "
                             "--onnx.")
    if len(tokens) > vocab_size:
        raise UsageError(f"--gguf: the tokenizer has {len(tokens)} ids and the model only {vocab_size}: save the "
                         "checkpoint with the tokenizer it was trained with.")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    types = [gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens]
    padding = range(len(tokens), vocab_size)
    return ([*tokens, *(f"[PAD{index}]" for index in padding)], merges,
            [*types, *(gguf.TokenType.UNUSED for _ in padding)])


def gguf_tensors(architecture: str, upstream, qtype: str):
    """(GGUF name, array, raw type) for every tensor of the upstream model, laid out as llama.cpp reads them."""
    import gguf

    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "gpt2": gguf.MODEL_ARCH.GPT2}[architecture]
    names = gguf.get_tensor_name_map(arch, upstream.config.num_hidden_layers)
    config = upstream.config
    for hf_name, tensor in upstream.state_dict().items():
        if architecture == "gpt2" and (hf_name.endswith(".attn.bias") or hf_name.endswith(".attn.masked_bias")):
            continue
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UsageError(f"--gguf: llama.cpp's {architecture} has no tensor for {hf_name}: export with --onnx.")
        data = tensor.detach().float().numpy()
        if architecture == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            # llama.cpp's rotary pairs dimensions (i, i + d/2) as neighbours: convert_hf_to_gguf permutes q and k
            heads = config.num_attention_heads if "attn_q" in name else config.num_key_value_heads
            data = data.reshape(heads, 2, data.shape[0] // heads // 2, *data.shape[1:]).swapaxes(1, 2)
            data = data.reshape(tensor.shape)
        if architecture == "gpt2" and name.endswith(("attn_qkv.weight", "attn_output.weight", "ffn_up.weight",
                                                     "ffn_down.weight")):
            data = data.T  # GPT-2's Conv1D keeps (in, out)
        data = np.ascontiguousarray(data)
        if data.ndim == 1 or qtype == "f32":
            yield name, data, gguf.GGMLQuantizationType.F32
        elif qtype == "f16":
            yield name, data.astype(np.float16), gguf.GGMLQuantizationType.F16
        elif data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
            yield name, data, gguf.GGMLQuantizationType.F32  # rows that do not fill q8_0 blocks stay f32
        else:
            yield name, gguf.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def write_gguf(path: Path, name: str, architecture: str, upstream, tokenizer, vocabulary, qtype: str) -> None:
    """The GGUF file of `upstream` (llama.cpp's `architecture`) with the tokenizer's `vocabulary` (gguf_vocabulary)
    inside, weights in `qtype`."""
    import gguf

    config = upstream.config
    tokens, merges, types = vocabulary
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
    writer.add_block_count(config.num_hidden_layers)
    if architecture == "llama":
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
    else:
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # llama.cpp refuses a BPE vocabulary without the merges key, and GGUF has no empty array: a vocabulary of single
    # bytes gets one empty merge, which pairs nothing (transformers' GGUF tokenizer reader cannot read it)
    writer.add_token_merges(merges or [""])
    for role in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{role}_token_id")
        if token_id is not None:
            getattr(writer, f"add_{role}_token_id")(token_id)
    writer.add_add_bos_token(False)  # mtlm's tokenizers add no tokens of their own
    try:
        for tensor_name, data, raw_type in gguf_tensors(architecture, upstream, qtype):
            writer.add_tensor(tensor_name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def check_logits(name: str, logits: np.ndarray, reference: torch.Tensor, tolerance: float) -> float:
    """The largest difference from the reference logits relative to their std; a RuntimeError past `tolerance`."""
    reference = reference.float().numpy()
    error = float(np.abs(logits - reference).max() / reference.std())
    if not error <= tolerance:
        raise RuntimeError(f"The {name} export computes different logits: max |difference| / std = {error:.3g}, "
                           f"above the {tolerance:g} allowed; nothing was written. This is a bug in mtlm's export: "
                           "report it with the checkpoint's config.json.")
    return error


def check_ids(vocabulary_size: int, seed: int = 0) -> torch.Tensor:
    """A batch of two rows of ids to compare logits on."""
    return torch.randint(0, vocabulary_size, (2, 12), generator=torch.Generator().manual_seed(seed))


def export_gguf(source: str | os.PathLike, destination: str | os.PathLike, qtype: str = "f32",
                overwrite: bool = False) -> tuple[Path, float]:
    """Write `destination`/model-QTYPE.gguf from the checkpoint `source`, checked against it; returns the file and
    its largest logit difference relative to the logits' std."""
    require("gguf", "--gguf")
    if qtype not in GGUF_TYPES:
        raise UsageError(f"--gguf-type {qtype!r}: choose one of {', '.join(GGUF_TYPES)}.")
    source = Path(source)
    read_checkpoint_config(source)
    require_tokenizer(source)
    model = load_causal_lm(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    architecture, upstream = llama_cpp_architecture(model)
    vocabulary = gguf_vocabulary(tokenizer, model.config.vocab_size)  # refuses what llama.cpp cannot reproduce
    filename = f"model-{qtype}.gguf"
    if (Path(destination) / filename).exists() and not overwrite:
        raise FileExistsError(f"{Path(destination) / filename} exists: pass --overwrite to replace it.")
    ids = check_ids(model.config.vocab_size)
    with torch.no_grad():
        reference = model(ids).logits
    # merged into the folder: the files of the other types already there stay
    with staged(destination, folder=True, merge=True) as staging:
        write_gguf(staging / filename, source.resolve().name, architecture, upstream, tokenizer, vocabulary, qtype)
        loaded = AutoModelForCausalLM.from_pretrained(staging, gguf_file=filename, dtype=torch.float32).eval()
        with torch.no_grad():
            error = check_logits(f"GGUF {qtype}", loaded(ids).logits.numpy(), reference, TOLERANCE[qtype])
    return Path(destination) / filename, error


class LogitsOnly(torch.nn.Module):
    """A causal LM as the graph an ONNX runtime runs: (input_ids, attention_mask) -> logits, no cache."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def export_onnx(source: str | os.PathLike, destination: str | os.PathLike,
                overwrite: bool = False) -> tuple[Path, float]:
    """Write `destination` with model.onnx (input_ids, attention_mask -> logits; batch and sequence dynamic), the
    config and the tokenizer, checked with onnxruntime; returns the file and its largest logit difference relative
    to the logits' std."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "--onnx")
    import onnxruntime

    source = Path(source)
    model_type = read_checkpoint_config(source)["model_type"]
    require_tokenizer(source)
    if model_type == "mtlm_byte":
        raise UsageError("--onnx: mtlm_byte pools bytes into chunks whose number depends on the text, a shape "
                         "torch.export cannot trace into an ONNX graph; run mtlm_byte with PyTorch "
                         "(trust_remote_code).")
    model = load_causal_lm(source).eval()
    model.config.use_cache = False
    if model._can_set_experts_implementation():
        model.set_experts_implementation("batched_mm")  # every expert on every token: a graph without data-dependent
        # shapes, which ONNX needs (grouped_mm has no ONNX form)
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = check_ids(model.config.vocab_size)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row, as batched generation makes
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    with staged(destination, folder=True, overwrite=overwrite) as staging:
        path = staging / "model.onnx"
        torch.onnx.export(LogitsOnly(model), (ids, mask), str(path), dynamo=True, input_names=["input_ids",
                          "attention_mask"], output_names=["logits"],
                          dynamic_shapes={"input_ids": {0: batch, 1: sequence},
                                          "attention_mask": {0: batch, 1: sequence}}, external_data=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        keep = mask.bool().numpy()  # padded positions' logits are meaningless on both sides
        error = check_logits("ONNX", logits[keep], reference[torch.from_numpy(keep)], TOLERANCE["onnx"])
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return Path(destination) / "model.onnx", error
