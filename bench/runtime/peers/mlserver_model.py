"""MLServer peer's custom runtime: an ``MLModel`` that runs the onnxruntime session.

Decodes the v2 request with MLServer's NumpyCodec and encodes the answer with it, as MLServer's
custom-runtime docs show. Loaded by ``mlserver start`` (see mlserver_server.py).
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from ortsession import make_session


class OnnxModel(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self.session = make_session(self.settings.parameters.uri, int(extra.get("intra", 1)))
        inp = self.session.get_inputs()[0]
        self.in_name = inp.name
        self.out_name = self.session.get_outputs()[0].name
        row = [int(d) for d in inp.shape[1:]]
        self.session.run(None, {self.in_name: np.zeros([1, *row], np.float32)})  # warm-up
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.session.run([self.out_name], {self.in_name: x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(self.out_name, y)])
