"""What a result needs to be trusted later: package versions, device, host, git commit.

Recorded next to every result file (``results.json``, ``history.json``) so that a number can be
traced to the code and the hardware that produced it, and bitwise reproducibility claims can be
checked ("same versions, same device kind").
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

PACKAGES = ("jaxrae", "jax", "jaxlib", "flax", "optax", "chex", "numpy")


def environment() -> dict:
    """Versions of the packages that determine results, the JAX backend and devices, the host."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "git_commit": _git_commit(),
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
