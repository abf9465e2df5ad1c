"""Side virtualenvs for test tools whose dependencies clash with ours (moto pins
python-dateutil<3 through botocore, which the operator's kubernetes client rejects; kserve pulls
a large stack of its own). Each is built once with pip from PyPI and cached by its requirement
list; a failure to build is a test error, never a skip.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("KUBEMAAS_TEST_CACHE",
                            Path(tempfile.gettempdir()) / "kubemaas-test-cache"))

MOTO = ["moto[server]==5.2.5"]
KSERVE = ["kserve==0.21.0"]
# TensorFlow for the Keras/SavedModel tests: it builds the models and computes the reference
# answers; tf2onnx converts SavedModels (kubemaas_runtime.tfconvert); tf-keras writes Keras 2 .h5
TENSORFLOW = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "tf-keras==2.21.0"]
GUIDELLM = ["guidellm==0.8.1"]  # an LLM load generator (OpenAI HTTP backend)


def ensure_venv(name: str, requirements: list[str], timeout: float = 900) -> Path:
    """Return the python of a cached virtualenv with ``requirements`` installed."""
    key = hashlib.sha256(("\n".join(requirements) + sys.version).encode()).hexdigest()[:12]
    root = CACHE / "venvs" / f"{name}-{key}"
    python = root / "bin" / "python"
    marker = root / ".kubemaas-ready"
    if marker.is_file():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest processes never build the same venv
        if marker.is_file():
            return python
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", *requirements], check=True, timeout=timeout)
        marker.write_text("\n".join(requirements))
    return python


if __name__ == "__main__":  # warm the cache: python tests/runtime/venvs.py
    for name, reqs in (("moto", MOTO), ("kserve", KSERVE), ("tensorflow", TENSORFLOW),
                       ("guidellm", GUIDELLM)):
        print(name, ensure_venv(name, reqs))
