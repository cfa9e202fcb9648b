import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Each test process caches datasets in a folder of its own, never in the user's cache.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="mtlm-datasets-"))
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

import mtlm  # noqa: E402, F401  (registers the families)

TESTS = Path(__file__).parent
# Logits stored in a fixture were computed on another CPU, whose kernels may sum in another order: they agree to
# float32 round-off (about 1e-7 here), where a changed computation moves them by orders of magnitude more.
FIXTURE_ATOL = 1e-6
FAMILIES = ("mtlm_llama", "mtlm_gpt", "mtlm_moe")
VOCAB_SIZE = 97

TINY = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
TINY_BY_FAMILY = {
    "mtlm_llama": dict(attention_bias=True, tie_word_embeddings=False),
    "mtlm_gpt": dict(num_key_value_heads=4, hidden_dropout=0.0, attention_dropout=0.0),
    "mtlm_moe": dict(num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.02),
}


def tiny_config(family: str, **overrides):
    """A few-thousand-parameter config of `family` (overrides win)."""
    return AutoConfig.for_model(family, **{**TINY, **TINY_BY_FAMILY[family], **overrides})


def tiny_model(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **overrides)).eval()


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Token ids avoiding the special ids 0-2, so that no row ends early at eos."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB_SIZE, (batch, length), generator=generator)


# Imported first thing by every script run_without_mtlm runs: `import mtlm` raises ImportError, as where it is absent.
WITHOUT_MTLM = """
import sys
sys.modules["mtlm"] = None
try:
    import mtlm
except ImportError:
    pass
else:
    raise SystemExit("mtlm is importable")
"""


def run_without_mtlm(script: str, *arguments: str, tmp_path: Path,
                     keep_stdin_open: bool = False) -> subprocess.CompletedProcess:
    """Run a Python `script` with `arguments` in a fresh process, offline, where mtlm cannot be imported, with a
    remote-code module cache of its own. With `keep_stdin_open` its stdin is a pipe nobody writes to or closes, as
    a terminal nobody types into: a prompt there waits instead of reading end-of-file."""
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": os.environ.get("PATH", "")}
    command = [sys.executable, "-c", WITHOUT_MTLM + script, *arguments]
    if not keep_stdin_open:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr, \
            subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr,
                             text=True) as process:
        returncode = process.wait(timeout=600)
        stdout.seek(0)
        stderr.seek(0)
        return subprocess.CompletedProcess(command, returncode, stdout.read(), stderr.read())
