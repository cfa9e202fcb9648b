from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="mtlm",
    version="0.1.0",
    description="A transformers-native zoo of tiny language models",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mtlm", "mtlm.*"]),
    package_data={"mtlm.data": ["corpora/*.txt"], "mtlm.hub_cards": ["templates/*.md"]},
    python_requires=">=3.10",
    # torch is installed first as `pip install torch==2.13.0`; any range that version satisfies installs nothing more.
    install_requires=[
        "torch>=2.4",
        "transformers>=5.23,<6",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "datasets>=3.0",
        "huggingface_hub>=1.0",
        "pyyaml>=6.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "jinja2>=3.0",  # model-card templates
    ],
    extras_require={
        "eval": ["lm-eval>=0.4.13,<0.5"],
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "lm-eval>=0.4.13,<0.5"],
        "flax": ["jax>=0.6", "flax>=0.12", "optax>=0.2.8"],
        "cuda": ["flash-attn>=2.6"],
    },
    entry_points={"console_scripts": ["mtlm=mtlm.cli:main"]},
)
