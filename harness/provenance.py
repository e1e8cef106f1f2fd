"""What every run records so it can be reproduced: versions, commit, hardware."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from harness import __version__
from harness.paths import REPO_ROOT

TRACKED_PACKAGES = (
    "torch", "torch_geometric", "ray", "optuna", "mlflow", "pymatgen", "matminer",
    "scikit-learn", "pytorch-optimizer", "numpy", "pandas",
)


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"harness": __version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# Files that jobs running beside a sweep write into the work tree (benchmark records, the
# committed leaderboard pages): editing them changes no run's code or config, so they do not
# make the commit "-dirty" (which is there to flag runs made with uncommitted code).
OUTPUTS_NOT_CODE = ("benchmarks/RESULTS.md", "benchmarks/records", "leaderboards")


@functools.cache
def git_commit(root: Path = REPO_ROOT) -> str:
    """The repository's HEAD commit, with ``-dirty`` if tracked files other than generated
    outputs (``OUTPUTS_NOT_CODE``) changed; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not commit:
            return "unknown"
        excluded = [f":(exclude){path}" for path in OUTPUTS_NOT_CODE]
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
            cwd=root, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def hardware() -> str:
    """``"cpu: <model> x<cores>"`` or ``"gpu: <name>"``, for the run where it is called."""
    import os

    import torch

    if torch.cuda.is_available():
        return f"gpu: {torch.cuda.get_device_name(0)}"
    return f"cpu: {cpu_model()} x{os.cpu_count()}"
