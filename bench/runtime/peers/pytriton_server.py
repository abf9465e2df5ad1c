"""PyTriton peer: a real Triton server (from the nvidia-pytriton wheel) in front of a Python
callable that runs the onnxruntime session. Dynamic batching on (Triton's dynamic batcher) or off
(no dynamic_batching section: Triton runs each request alone).

    python pytriton_server.py --model m.onnx --name mlp --port 8000 --intra 1 [--batch 32]
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from ortsession import make_session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--intra", type=int, default=1)
    ap.add_argument("--batch", type=int, default=0, help="dynamic batching up to N rows; 0 = off")
    ap.add_argument("--delay-us", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    session = make_session(args.model, args.intra)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    row_shape = tuple(int(d) for d in inp.shape[1:])
    out_row = tuple(int(d) for d in out.shape[1:])
    session.run(None, {inp.name: np.zeros((1, *row_shape), np.float32)})  # warm-up

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {out.name: session.run([out.name], {inp.name: inputs[inp.name]})[0]}

    if args.batch:
        config = ModelConfig(batching=True, max_batch_size=args.batch,
                             batcher=DynamicBatcher(max_queue_delay_microseconds=args.delay_us))
    else:  # batch axis kept (max_batch_size 1), no dynamic batcher: one request per call
        config = ModelConfig(batching=True, max_batch_size=1, batcher=None)  # type: ignore[arg-type]
    triton_config = TritonConfig(http_address="127.0.0.1", http_port=args.port,
                                 grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                                 metrics_address="127.0.0.1", metrics_port=args.metrics_port,
                                 log_verbose=0)
    with Triton(config=triton_config) as triton:
        triton.bind(model_name=args.name, infer_func=infer,
                    inputs=[Tensor(name=inp.name, dtype=np.float32, shape=row_shape)],
                    outputs=[Tensor(name=out.name, dtype=np.float32, shape=out_row)],
                    config=config)
        triton.serve()


if __name__ == "__main__":
    main()
