"""Transport-agnostic dataplane: live, ready, metadata, infer (v2) and predict (v1).

It decodes with ``codecs``, validates against the model's own metadata, awaits the ``Batcher`` and
encodes the answer. Errors are raised as ``errors.RuntimeErrorBase`` subclasses; the transport maps
them to status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from . import __version__
from .backends.base import Model, TensorSpec
from .batching import Batcher, Outputs
from .codecs import InferRequest, decode_infer_request, encode_infer_response
from .codecs_v1 import SIGNATURE, decode_predict, encode_predict
from .errors import InvalidInput, ModelNotFound, Unavailable

T = TypeVar("T")

SERVER_NAME = "kubemaas"
EXTENSIONS = ["binary_tensor_data", "v1_predict"]

# Bodies at least this large are decoded (JSON parse + tensor conversion) in a worker thread, not
# on the event loop: a 3 MB JSON body takes 7-27 ms to decode, during which health probes and
# small requests would wait. Below it the hop to the thread (~30 us) would add a third to the
# decode (0.09 ms for 60 KiB with orjson). Measured figures in docs/runtime.md.
DECODE_OFFLOAD_BYTES = 64 * 1024
# A JSON response takes about this many bytes of text per byte of FP32 data (0.1234567 and a
# comma for 4 bytes): responses estimated over DECODE_OFFLOAD_BYTES are encoded off the loop too.
JSON_BYTES_PER_DATA_BYTE = 4


class DataPlane:
    def __init__(self, model_name: str, model_version: str, request_timeout_s: float,
                 signature_name: str = SIGNATURE) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.signature_name = signature_name  # the one the v1 predict route takes
        self.request_timeout_s = request_timeout_s
        self.model: Model | None = None
        self.batcher: Batcher | None = None
        self.draining = False
        self.cutting = False  # SIGTERM's drain timed out: requests still waiting end with a 503
        self._limits: set[asyncio.Timeout] = set()  # the request timeouts of requests in _run
        self.load_error: str | None = None
        self._inputs: dict[str, TensorSpec] = {}
        self._shared_dims: list[tuple[str, list[tuple[str, int]]]] = []
        self._outputs: dict[str, TensorSpec] = {}
        # one thread: the GIL serialises pure-Python decoding anyway, and a single worker keeps
        # at most one large request's intermediate Python lists (larger than its body) alive at
        # a time
        self._codec_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubemaas-codec")

    def close(self) -> None:
        """Stop the codec thread and the batcher of the model it serves."""
        self._codec_thread.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close(wait=not self.cutting)

    async def _codec(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` (a decode or an encode of ``size`` bytes) inline when small, in the
        codec thread when large."""
        if size < DECODE_OFFLOAD_BYTES:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._codec_thread, fn, *args)

    # -- lifecycle ------------------------------------------------------------------------
    def set_model(self, model: Model, batcher: Batcher) -> None:
        self.model = model
        self.batcher = batcher
        self._inputs = {s.name: s for s in model.inputs}
        self._outputs = {s.name: s for s in model.outputs}
        self._shared_dims = shared_dims(model.inputs)

    # -- health and metadata --------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.batcher is not None and not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def check_model(self, name: str, version: str | None) -> None:
        if name != self.model_name:
            raise ModelNotFound(f"unknown model {name!r}; this server serves "
                                f"{self.model_name!r}")
        if version is not None and version != self.model_version:
            raise ModelNotFound(f"unknown version {version!r} of model {name!r}; this server "
                                f"serves version {self.model_version!r}")

    def model_ready(self, name: str, version: str | None) -> bool:
        self.check_model(name, version)
        return self.ready()

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        self.check_model(name, version)
        if self.model is None:
            raise Unavailable(f"model {name!r} is still loading")
        return {
            "name": self.model_name,
            "versions": [self.model_version],
            "platform": self.model.platform,
            "inputs": [s.metadata() for s in self.model.inputs],
            "outputs": [s.metadata() for s in self.model.outputs],
        }

    # -- inference ------------------------------------------------------------------------
    def _batcher(self) -> Batcher:
        # while draining, requests that still arrive are served: the endpoints controller takes
        # a moment to remove the pod, and refusing them would turn a rollout into errors
        if self.batcher is None:
            raise Unavailable(f"model {self.model_name!r} is still loading", retry_after_s=1)
        return self.batcher

    def _validate(self, inputs: Mapping[str, np.ndarray], datatypes: Mapping[str, str]) -> None:
        for name in inputs:
            if name not in self._inputs:
                raise InvalidInput(f"unknown input {name!r}; model {self.model_name!r} takes "
                                   f"{', '.join(self._inputs)}")
        for name, spec in self._inputs.items():
            arr = inputs.get(name)
            if arr is None:
                raise InvalidInput(f"missing input {name!r}")
            got = datatypes.get(name, spec.datatype)
            if got != spec.datatype:
                raise InvalidInput(f"input {name!r} has datatype {got}, the model expects "
                                   f"{spec.datatype}")
            if spec.shape is None:
                continue
            shape = arr.shape
            if len(shape) != len(spec.shape) or any(
                    want >= 0 and want != have for want, have in zip(spec.shape, shape,
                                                                      strict=True)):
                raise InvalidInput(f"input {name!r} has shape {list(shape)}, the model expects "
                                   f"{list(spec.shape)} (-1 = any)")

    def _check_shared_dims(self, inputs: Mapping[str, np.ndarray]) -> None:
        """onnxruntime does not check that dimensions the model names alike agree (it broadcast
        a mask of 1 row against ids of 2, or failed with a 500): refuse such a request."""
        for dim, places in self._shared_dims:
            first_name, first_axis = places[0]
            want = inputs[first_name].shape[first_axis]
            for name, axis in places[1:]:
                have = inputs[name].shape[axis]
                if have != want:
                    raise InvalidInput(
                        f"input {name!r} has {have} along dimension {axis}, input "
                        f"{first_name!r} {want} along dimension {first_axis}: the model names "
                        f"both {dim!r}, so they must be equal")

    def _check_outputs(self, names: list[str] | None) -> None:
        if names is None or not self._outputs:
            return
        for name in names:
            if name not in self._outputs:
                raise InvalidInput(f"unknown output {name!r}; model {self.model_name!r} has "
                                   f"{', '.join(self._outputs)}")

    def cut(self) -> None:
        """SIGTERM's drain timed out: every request waiting in the batcher or for its model call
        ends now with a 503 (its request timeout fires at once), and any later one too."""
        self.cutting = True
        now = asyncio.get_running_loop().time()
        for limit in list(self._limits):
            if not limit.expired():  # one whose own timeout just fired cannot be rescheduled
                limit.reschedule(now)

    async def _run(self, batcher: Batcher, inputs: Mapping[str, np.ndarray],
                   output_names: list[str] | None) -> Outputs:
        try:
            async with asyncio.timeout(0 if self.cutting else self.request_timeout_s) as limit:
                self._limits.add(limit)
                try:
                    return await batcher.infer(inputs, output_names)
                finally:
                    self._limits.discard(limit)
        except TimeoutError:
            if self.cutting:
                raise Unavailable("the server is shutting down; retry on another replica",
                                  retry_after_s=1) from None
            raise Unavailable(f"inference did not finish within {self.request_timeout_s:g} s",
                              retry_after_s=1) from None

    async def infer(self, name: str, version: str | None, body: bytes,
                    header_length: int | None) -> tuple[bytes, int | None]:
        """v2 infer: request body -> (response body, Inference-Header-Content-Length)."""
        self.check_model(name, version)
        batcher = self._batcher()
        # by the whole body: binary FP32 data is a zero-copy view, but binary BYTES elements are
        # split in Python, and the hop costs little next to moving 64 KiB
        request: InferRequest = await self._codec(len(body), decode_infer_request, body,
                                                   header_length)
        # the JSON text is not needed once decoded (binary tensors are views that keep their
        # part of it alive themselves): a request waiting for the model holds only its arrays
        del body
        self._validate(request.inputs, request.input_datatypes)
        self._check_shared_dims(request.inputs)
        self._check_outputs(request.output_names)
        outputs = await self._run(batcher, request.inputs, request.output_names)
        size = sum(arr.nbytes for name, arr in outputs.items()
                   if "*" not in request.binary_outputs and name not in request.binary_outputs)
        return await self._codec(size * JSON_BYTES_PER_DATA_BYTE, encode_infer_response,
                                  self.model_name, self.model_version, request.id, outputs,
                                  request.binary_outputs)

    async def predict_v1(self, name: str, body: bytes) -> bytes:
        """TensorFlow Serving's predict, row or columnar format (codecs_v1.py)."""
        self.check_model(name, None)
        batcher = self._batcher()
        assert self.model is not None
        inputs, columnar = await self._codec(len(body), decode_predict, body, self.model.inputs,
                                             self.signature_name)
        del body  # as in infer: a waiting request holds only its arrays
        self._validate(inputs, {})
        self._check_shared_dims(inputs)
        outputs = await self._run(batcher, inputs, None)
        size = sum(arr.nbytes for arr in outputs.values())
        return await self._codec(size * JSON_BYTES_PER_DATA_BYTE, encode_predict, outputs,
                                  columnar)


def shared_dims(specs: Sequence[TensorSpec]) -> list[tuple[str, list[tuple[str, int]]]]:
    """Each dimension name that two or more input dimensions share, with their (input, axis)."""
    places: dict[str, list[tuple[str, int]]] = {}
    for spec in specs:
        if spec.dims is None or spec.shape is None:
            continue
        for axis, dim in enumerate(spec.dims):
            if dim is not None and spec.shape[axis] < 0:
                places.setdefault(dim, []).append((spec.name, axis))
    return [(dim, where) for dim, where in places.items() if len(where) > 1]
