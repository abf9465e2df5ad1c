"""The Keras/TensorFlow models of the tests, built once by real TensorFlow in its side virtualenv
(make_keras_models.py) and cached; and the converter run as the init container runs it."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from pathlib import Path

from .venvs import CACHE, TENSORFLOW, ensure_venv

REPO = Path(__file__).resolve().parents[2]
BUILDER = Path(__file__).with_name("make_keras_models.py")


def tf_python() -> Path:
    """The python of the TensorFlow side virtualenv (built on first use, then cached)."""
    return ensure_venv("tensorflow", TENSORFLOW)


def keras_models_dir() -> Path:
    """The models and TensorFlow's answers, built once per builder version and cached."""
    python = tf_python()
    key = hashlib.sha256(BUILDER.read_bytes() + str(python).encode()).hexdigest()[:12]
    out = CACHE / f"keras-models-{key}"
    if not (out / "done").is_file():
        with (CACHE / f"keras-models-{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "done").is_file():
                subprocess.run([str(python), str(BUILDER), str(out)], check=True, timeout=600)
    return out


def tfconvert(args: list[str], env: dict[str, str] | None = None,
              ) -> subprocess.CompletedProcess[str]:
    """`python -m kubemaas_runtime.tfconvert ARGS` with the TensorFlow venv's python and this
    tree's runtime package, as the converter image runs it."""
    full = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO / "runtime")}
    return subprocess.run([str(tf_python()), "-m", "kubemaas_runtime.tfconvert", *args],
                          capture_output=True, text=True, env=full, timeout=600)
