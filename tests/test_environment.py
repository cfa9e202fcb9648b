"""setup.py's version bounds and the two lock files (scripts/lock.py) agree: both locks satisfy every requirement of
mtlm, the newest lock covers all of them, and the oldest pins each two-sided bound at its lower end."""

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REQUIREMENTS = Path(__file__).parent.parent / "requirements"
EXTRAS = ("dev", "flax", "eval")  # what the locks install (cuda's flash-attn needs a GPU build)


def pins(path: Path) -> dict[str, Version]:
    versions = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            versions[canonicalize_name(name)] = Version(version)
    return versions


def mtlm_requirements() -> list[Requirement]:
    """mtlm's requirements (torch aside: setup.sh installs it first) for the locked extras."""
    requirements = [Requirement(text) for text in importlib.metadata.requires("mtlm")]
    return [requirement for requirement in requirements if requirement.name != "torch" and (
        requirement.marker is None or any(requirement.marker.evaluate({"extra": extra}) for extra in EXTRAS))]


def test_both_locks_satisfy_every_requirement_and_the_oldest_sits_on_the_lower_bounds():
    newest, oldest = pins(REQUIREMENTS / "lock.txt"), pins(REQUIREMENTS / "oldest.txt")
    bounded = set()
    for requirement in mtlm_requirements():
        name = canonicalize_name(requirement.name)
        for lock_name, lock in (("lock.txt", newest), ("oldest.txt", oldest)):
            assert name in lock, f"{lock_name} does not pin {name}: regenerate it with scripts/lock.py"
            assert requirement.specifier.contains(lock[name], prereleases=True), \
                f"{lock_name} pins {name}=={lock[name]}, outside setup.py's {requirement.specifier}"
        lower = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if lower and any(spec.operator == "<" for spec in requirement.specifier):
            bounded.add(name)
            assert oldest[name] == Version(lower[0]), f"oldest.txt should pin {name} at its lower bound {lower[0]}"
    assert bounded == {"transformers", "accelerate", "datasets", "lm-eval", "jax", "flax", "optax"}
