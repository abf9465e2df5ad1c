"""KServe peer: the ``kserve`` package's ModelServer (FastAPI + uvicorn) with a custom
``kserve.Model`` that runs the onnxruntime session, written the way KServe's docs show it
(synchronous ``predict`` on an ``InferRequest``, v2 ``InferResponse`` back).

    python kserve_server.py --model m.onnx --name mlp --port 8080 --intra 1

KServe has no dynamic batching in the Python server (its batcher lives in the agent sidecar), so
this peer runs unbatched. gRPC, the per-request latency log line and KServe's logging setup (which
turns on uvicorn's access log) are switched off: all are on by default, and all cost CPU per
request that our runtime does not spend.
"""

from __future__ import annotations

import argparse
import sys
import uuid

import numpy as np
from ortsession import make_session


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--intra", type=int, default=1)
    args = ap.parse_args()
    # kserve parses its own flags from sys.argv at import time
    sys.argv = [sys.argv[0], "--http_port", str(args.port), "--enable_grpc", "false",
                "--enable_latency_logging", "false", "--configure_logging", "false",
                "--workers", "1"]
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.session = None
            self.load()

        def load(self) -> bool:
            self.session = make_session(self.path, args.intra)
            inp = self.session.get_inputs()[0]
            self.in_name = inp.name
            self.out_name = self.session.get_outputs()[0].name
            row = [int(d) for d in inp.shape[1:]]
            self.session.run(None, {self.in_name: np.zeros([1, *row], np.float32)})  # warm-up
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict[str, str] | None = None
                    ) -> InferResponse:
            x = payload.inputs[0].as_numpy()
            y = self.session.run([self.out_name], {self.in_name: x})[0]
            out = InferOutput(name=self.out_name, shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y, binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[out],
                                 response_id=payload.id or str(uuid.uuid4()))

    kserve.ModelServer().start([OnnxModel(args.name, args.model)])


if __name__ == "__main__":
    main()
