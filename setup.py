from pathlib import Path

from setuptools import find_packages, setup

TRACK = ["tensorboard>=2.14", "trackio>=0.40"]  # report_to: both log locally, with no account or network
EXPORT = ["gguf>=0.17", "onnx>=1.17", "onnxscript>=0.5", "onnxruntime>=1.20"]  # mtlm export --gguf / --onnx

setup(
    name="mtlm",
    version="0.2.0",
    description="A transformers-native zoo of tiny language models",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mtlm", "mtlm.*"]),
    package_data={"mtlm": ["configs/*.yaml"], "mtlm.data": ["corpora/*.txt"], "mtlm.hub_cards": ["templates/*.md"]},
    python_requires=">=3.11",  # what the lock files are tested on (numpy 2.4 needs 3.11)
    # torch is installed first as `pip install torch==2.13.0`; any range that version satisfies installs nothing more.
    # The fast-moving dependencies are bounded by what the suite runs on: CI tests the lower bounds
    # (requirements/oldest.txt) and the newest releases inside the bounds (requirements/lock.txt); scripts/lock.py
    # regenerates both. transformers 5.24 renamed the KV cache argument in a minor release, hence minor-level bounds.
    install_requires=[
        "torch>=2.6",
        "transformers>=5.23.0,<5.25",
        "accelerate>=1.13.0,<1.16",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "datasets>=4.8.0,<5.3",
        "huggingface_hub>=1.0",
        "pyyaml>=6.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "jinja2>=3.0",  # model-card templates
    ],
    extras_require={
        "eval": ["lm-eval>=0.4.13,<0.4.14"],
        "track": TRACK,
        "export": EXPORT,
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "lm-eval>=0.4.13,<0.4.14", *TRACK, *EXPORT],
        "flax": ["jax>=0.9.0,<0.11", "flax>=0.12.6,<0.13", "optax>=0.2.6,<0.3"],
        "cuda": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["mtlm=mtlm.cli:main"]},
)
