"""kserve's ``InferenceGRPCClient``, run as its own process by the tests: kserve registers
the ``inference.*`` messages in protobuf's default pool, as tritonclient does, and one
process cannot load both.

Usage: ``python kserve_client.py PORT KEY MODEL ROWS_JSON``; prints one JSON document.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(port: str, key: str, model: str, rows: list[list[float]]) -> dict[str, Any]:
    client = InferenceGRPCClient(f"127.0.0.1:{port}", retries=0)
    headers = [("authorization", f"Bearer {key}")]
    x = np.asarray(rows, dtype=np.float64)
    out: dict[str, Any] = {
        "live": await client.is_server_live(),
        "ready": await client.is_server_ready(),
        "model_ready": await client.is_model_ready(model, headers=headers),
    }
    for form, binary in (("typed", False), ("raw", True)):
        tensor = InferInput("input-0", list(x.shape), "FP64")
        tensor.set_data_from_numpy(x, binary_data=binary)
        request = InferRequest(
            model_name=model, infer_inputs=[tensor], parameters={"explain": True}, request_id="k-1"
        )
        answer = await client.infer(request, headers=headers)
        out[form] = {
            "id": answer.id,
            "model_version": answer.model_version,
            "outputs": {o.name: o.as_numpy().tolist() for o in answer.outputs},
        }
    try:
        await client.infer(InferRequest(model_name=model, infer_inputs=[tensor]))
    except Exception as exc:  # the client's own error type for a gRPC status
        out["no_key_error"] = str(exc)
    await client.close()
    return out


if __name__ == "__main__":
    port, key, model, rows = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(port, key, model, json.loads(rows)))))
