"""Hostile .keras files and Keras' errors, without Keras: a configuration that unpacks to
gigabytes, a damaged archive, Keras' nested load errors and a model's IndexError."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from kubemaas_runtime.backends.keras import _model_error, _unique, load_error_reason
from kubemaas_runtime.backends.keras_config import MAX_CONFIG_BYTES, KerasConfigError, read_config
from kubemaas_runtime.errors import InvalidInput


def test_a_config_json_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.keras"
    with (zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf,
          zf.open("config.json", "w") as f):
        for _ in range(MAX_CONFIG_BYTES // (1 << 20) + 1):
            f.write(b" " * (1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(KerasConfigError, match=r"bomb.keras: its config.json unpacks to "
                                               r"68157440 bytes"):
        read_config(bomb)


def test_a_damaged_config_json_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("config.json", '{"class_name": "Sequential", "config": {}}')
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"Sequential", b"Sequentia1"))  # the CRC no longer matches
    with pytest.raises(KerasConfigError, match=r"^m.keras: a damaged .keras archive: Bad "
                                               r"CRC-32"):
        read_config(path)


NESTED = (
    "<class 'keras.src.models.sequential.Sequential'> could not be deserialized properly. "
    "Please ensure ...\n\nconfig={'module': 'keras', 'class_name': 'Sequential'}\n\n"
    "Exception encountered: <class 'keras.src.layers.core.dense.Dense'> could not be "
    "deserialized properly.\n\nconfig={'name': 'o'}\n\nException encountered: \x1b[1mCould not "
    "locate function 'system'.\x1b[0m Make sure custom classes ...")


def test_a_nested_keras_load_error_gives_its_innermost_cause() -> None:
    assert load_error_reason(ValueError(NESTED)) == (
        "Could not locate function 'system'. Make sure custom classes ...")
    assert load_error_reason(ValueError("plain reason\nmore")) == "plain reason"
    assert load_error_reason(OSError("")) == "OSError"


def test_an_index_error_in_the_model_is_the_client_s() -> None:
    exc = IndexError("Exception encountered when calling Embedding.call().\n\n"
                     "\x1b[1mindex out of range in self\x1b[0m\n\nArguments received by "
                     "Embedding.call():\n  • inputs=torch.Tensor(shape=(1, 20))")
    err = _model_error(exc)
    assert isinstance(err, InvalidInput)
    assert str(err) == ("the model rejected the input: Embedding.call(): index out of range "
                        "in self")
    other = RuntimeError("CUDA out of memory")
    assert _model_error(other) is other


def test_an_error_of_a_request_unfit_for_one_call_is_the_client_s() -> None:
    """Inputs whose batch sizes differ (Keras' inputs share their first dimension) or a tensor
    with an empty dimension make the model fail inside (Concatenate, GlobalMaxPooling1D): that
    was a 500 whose message lost Keras' reason ("inference failed: RuntimeError: Exception
    encountered when calling Concatenate.call()."), now a 400 that gives it and says why."""
    concat = RuntimeError("Exception encountered when calling Concatenate.call().\n\n\x1b[1m"
                          "Sizes of tensors must match except in dimension 1.\x1b[0m\n\n"
                          "Arguments received by Concatenate.call():\n  • inputs=[...]")
    err = _model_error(concat, {"a": np.zeros((2, 4)), "seq": np.zeros((1, 5, 3))})
    assert isinstance(err, InvalidInput)
    assert str(err) == ("the model rejected the input: Concatenate.call(): Sizes of tensors "
                        "must match except in dimension 1. (the inputs' first (batch) "
                        "dimensions differ: 'a' 2, 'seq' 1)")
    empty = ValueError("Exception encountered when calling GlobalMaxPooling1D.call().\n\n"
                       "Cannot compute the max of an empty tensor.")
    err = _model_error(empty, {"img": np.zeros((1, 0, 3))})
    assert isinstance(err, InvalidInput) and str(err) == (
        "the model rejected the input: GlobalMaxPooling1D.call(): Cannot compute the max of "
        "an empty tensor. (input 'img' has an empty dimension: [1, 0, 3])")
    # a request fit for the model: the model's own failure stays a server error
    other = RuntimeError("CUDA out of memory")
    assert _model_error(other, {"a": np.zeros((2, 4)), "seq": np.zeros((2, 5, 3))}) is other
    assert str(_model_error(RuntimeError("bad"), {"x": np.zeros((0, 2))})) == (
        "the model rejected the input: bad (input 'x' has an empty dimension: [0, 2])")


def test_repeated_tensor_names_get_suffixes_no_other_tensor_has() -> None:
    """keras.Model(x, [a, a, b]) with layers named "x" and "x_1": the second a was named x_1
    too, so the metadata listed two outputs x_1 ([-1, 1] and [-1, 3]) and answers held two
    outputs of three."""
    assert _unique(["x", "x", "x_1"]) == ["x", "x_2", "x_1"]
    assert _unique(["x_1", "x", "x"]) == ["x_1", "x", "x_2"]
    assert _unique(["a", "a", "a"]) == ["a", "a_1", "a_2"]
    assert _unique(["x", "x", "x_1", "x_2"]) == ["x", "x_3", "x_1", "x_2"]


def test_a_load_error_that_introduces_its_reason_keeps_it() -> None:
    """Keras' error for weights that do not fit the configuration puts the reason on the line
    after "...for object <Dense name=head_two, built=True>:"; the one line ended at the colon."""
    exc = ValueError("A total of 1 objects could not be loaded. Example error message for object "
                     "<Dense name=head_two, built=True>:\n\nLayer 'head_two' expected 2 "
                     "variables, but received 0 variables during loading. Expected: ['kernel', "
                     "'bias']\n\nList of objects that could not be loaded:\n[<Dense>]")
    assert load_error_reason(exc) == (
        "A total of 1 objects could not be loaded. Example error message for object <Dense "
        "name=head_two, built=True>: Layer 'head_two' expected 2 variables, but received 0 "
        "variables during loading. Expected: ['kernel', 'bias']")
    assert load_error_reason(ValueError("only a line:")) == "only a line:"
