"""Side virtualenvs for test tools whose dependencies clash with ours (moto pins
python-dateutil<3 through botocore, which the operator's kubernetes client rejects; kserve pulls
a large stack of its own). Each is built once with pip from PyPI and cached by its requirement
list (kubemaas_testbed.venvs builds it); a failure to build is a test error, never a skip.
guidellm sees our own venv's packages after its own: it requires torch, and a copy of PyPI's
(with its CUDA libraries) would put 5 GB more on the disk CI shares.
"""

from __future__ import annotations

import os
import sysconfig
import tempfile
from pathlib import Path

from kubemaas_testbed.venvs import CachedVenv

CACHE = Path(os.environ.get("KUBEMAAS_TEST_CACHE",
                            Path(tempfile.gettempdir()) / "kubemaas-test-cache"))

MOTO = ["moto[server]==5.2.5"]
KSERVE = ["kserve==0.21.0"]
# TensorFlow for the Keras/SavedModel tests: it builds the models and computes the reference
# answers; tf2onnx converts SavedModels (kubemaas_runtime.tfconvert); tf-keras writes Keras 2 .h5
TENSORFLOW = ["tensorflow-cpu==2.21.0", "tf2onnx==1.17.0", "tf-keras==2.21.0"]
GUIDELLM = ["guidellm==0.8.1"]  # an LLM load generator (OpenAI HTTP backend)


# the venvs that see our own packages after theirs (pip adds only what they lack)
SEES_OUR_PACKAGES = {"guidellm"}


def ensure_venv(name: str, requirements: list[str], timeout: float = 900) -> Path:
    """Return the python of a cached virtualenv with ``requirements`` installed."""
    shared = Path(sysconfig.get_paths()["purelib"]) if name in SEES_OUR_PACKAGES else None
    venv = CachedVenv(CACHE / "venvs", name, "\n".join(requirements), shared=shared)
    return venv.ensure([requirements], timeout=timeout, pip_args=["--quiet"])


if __name__ == "__main__":  # warm the cache: python tests/runtime/venvs.py
    for name, reqs in (("moto", MOTO), ("kserve", KSERVE), ("tensorflow", TENSORFLOW),
                       ("guidellm", GUIDELLM)):
        print(name, ensure_venv(name, reqs))
