"""The one onnxruntime session every peer uses: the same options as our runtime's backend.

Our runtime is started with ``--intra-op-threads N --inter-op-threads 0``: intra_op_num_threads=N,
sequential execution (no inter-op pool), ORT_ENABLE_ALL, CPU provider. The peers build exactly that.
Imported by the peer servers inside their own virtualenvs (the script's folder is on sys.path).
"""

from __future__ import annotations

import onnxruntime as ort


def make_session(path: str, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
