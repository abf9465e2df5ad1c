"""A probe file named in the spec (``spec.model.optimize.probe``): the rows the optimized model is
calibrated and measured on, instead of rows generated from the model's input metadata.

Format: a NumPy ``.npz`` archive (``numpy.savez``) holding one array per model input, named
after the input, rows along the first axis, the same number of rows in every array. Why ``.npz``:
numpy reads it without pickle (``allow_pickle=False``: a probe file cannot run code), it carries
every numeric dtype and shape exactly, it is one file that any storage scheme serves, and the
people who have real inputs at hand have them as arrays already (``np.savez("probe.npz",
x=rows)``). Integer and boolean inputs (token ids, masks) keep their exact values; floating
arrays may be of another float width (cast to the input's), but an integer input is never fed a
float array (that would silently truncate)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..backends.base import DATATYPE_TO_NUMPY, TensorSpec
from ..errors import StartupError

MAX_ROWS = 4096


def _cast(name: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    want = DATATYPE_TO_NUMPY[spec.datatype]
    if arr.dtype == want:
        return arr
    if want.kind == "f" and arr.dtype.kind in "fiu":
        return arr.astype(want)
    if want.kind in "iu" and arr.dtype.kind in "iu" and np.can_cast(arr.dtype, want, "same_kind"):
        info = np.iinfo(want.type)  # type: ignore[type-var]
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise StartupError(f"probe file: {name!r} has values outside {want}")
        return arr.astype(want)
    if want.kind == "b" and arr.dtype.kind == "b":
        return arr
    raise StartupError(f"probe file: {name!r} is {arr.dtype}, the model's input is "
                       f"{spec.datatype}")


def _check_shape(name: str, arr: np.ndarray, spec: TensorSpec) -> None:
    if spec.shape is None:
        return
    if arr.ndim != len(spec.shape) or arr.ndim == 0:
        raise StartupError(f"probe file: {name!r} has shape {list(arr.shape)}, the model's "
                           f"input is {list(spec.shape)} (rows along the first axis)")
    for got, want in zip(arr.shape[1:], spec.shape[1:], strict=True):
        if want >= 0 and got != want:
            raise StartupError(f"probe file: {name!r} has shape {list(arr.shape)}, the model's "
                               f"input is {list(spec.shape)}")


def load(path: Path, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The probe rows of ``path`` for inputs ``specs``: every input present, nothing else,
    dtypes and shapes checked, the same row count (1..4096) in each."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise StartupError(f"probe file {path.name}: not a NumPy .npz archive ({exc})") from None
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise StartupError(f"probe file: arrays must be named after the model's inputs "
                           f"{names}; missing {missing}, unexpected {extra}")
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        arr = arrays[spec.name]
        if spec.datatype == "BYTES" or spec.datatype not in DATATYPE_TO_NUMPY:
            raise StartupError(f"input {spec.name!r}: probe rows need a numeric datatype")
        _check_shape(spec.name, arr, spec)
        feeds[spec.name] = np.ascontiguousarray(_cast(spec.name, arr, spec))
    rows = {len(v) for v in feeds.values()}
    if len(rows) != 1:
        raise StartupError(f"probe file: every array needs the same number of rows, got "
                           f"{ {k: len(v) for k, v in feeds.items()} }")
    (count,) = rows
    if not 1 <= count <= MAX_ROWS:
        raise StartupError(f"probe file: {count} rows; 1..{MAX_ROWS} are allowed")
    return feeds
