"""Drive a kubemaas runtime with the kserve package's REST client, unchanged.

Runs inside the cached kserve virtualenv (see venvs.py), not in the test process:

    KSERVE_PY kserve_client.py BASE_URL MODEL_NAME INPUT.npy

Prints one JSON object with the outputs it got back.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def main(base: str, model: str, x: np.ndarray) -> dict[str, object]:
    out: dict[str, object] = {}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        out["live"] = await client.is_server_live(base)
        out["ready"] = await client.is_server_ready(base)
        out["model_ready"] = await client.is_model_ready(base, model)
        for binary in (False, True):
            tensor = InferInput(name="x", shape=list(x.shape), datatype="FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name=model, infer_inputs=[tensor], request_id="k-1",
                                   request_outputs=[RequestedOutput(
                                       "y", parameters={"binary_data": binary})])
            response = await client.infer(base, request, model_name=model)
            (output,) = response.outputs
            out[f"y_binary_{binary}"] = output.as_numpy().tolist()
            out[f"id_binary_{binary}"] = response.id
    finally:
        await client.close()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0, timeout=30))
    try:
        result = await v1.infer(base, {"instances": x.tolist()}, model_name=model)
        out["v1"] = result
    finally:
        await v1.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], np.load(sys.argv[3])))))
