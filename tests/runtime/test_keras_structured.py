"""Keras models built by real TensorFlow 2.21 (make_keras_models), served by the runtime as a
real process: request values the model itself rejects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from . import keras_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_dir() -> Path:
    return keras_models.keras_models_dir()


def _serve(runtime_server: Any, path: Path) -> Any:
    return runtime_server(["--model-uri", str(path), "--name", "m", "--intra-op-threads", "1"],
                          timeout=240)


def test_values_the_model_rejects_are_400_not_500(runtime_server: Any,
                                                  keras_dir: Path) -> None:
    """A token id past the Embedding's 1000 rows (TensorFlow: InvalidArgumentError)."""
    server = _serve(runtime_server, keras_dir / "text.keras")
    status, doc = server.post_json("/v1/models/m:predict", {"instances": [[5000] * 20]})
    assert status == 400, doc
    assert doc["error"] == ("the model rejected the input: Embedding.call(): index out of "
                            "range in self"), doc
    status, doc = server.post_json("/v1/models/m:predict", {"instances": [[7] * 20]})
    assert status == 200, doc
