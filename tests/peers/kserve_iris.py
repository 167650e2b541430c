"""A KServe model server (the real `kserve` Python package) serving the iris model over the
Open Inference Protocol: v2 REST on --http_port and gRPC on --grpc_port. The model is the same
logistic regression as scoregate's demo model (src/demo/model.rs), so answers can be checked.

    python kserve_iris.py --model_name iris --http_port 8080 --grpc_port 8081
"""
import argparse
import math

import kserve
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

WEIGHTS = [-0.39, -0.51, 2.93, 2.42]
INTERCEPT = -14.4


def p_virginica(row):
    z = INTERCEPT + sum(x * w for x, w in zip(row, WEIGHTS))
    return round(1.0 / (1.0 + math.exp(-z)), 4)


class Iris(Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        rows = payload.inputs[0].as_numpy().reshape(-1, 4).tolist()
        out = InferOutput(name="p_virginica", shape=[len(rows)], datatype="FP32")
        out.set_data_from_numpy(__import__("numpy").array([p_virginica(r) for r in rows], dtype="float32"))
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                enable_latency_logging=False).start([Iris(args.model_name or "iris")])
