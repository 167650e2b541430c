"""gRPC clients (grpcio, and Triton's `tritonclient.grpc`) through a scoregate gateway over TLS
with key auth. Prints one JSON object: what each call returned, or the status code, details and
trailing metadata the library reports.

    python grpc_client.py --target localhost:8443 --ca ca.pem --key KEY
"""
import argparse
import json
import threading
import time

import grpc
import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--triton", default="iris-grpc", help="services for Triton's client")
    a = ap.parse_args()
    creds = grpc.ssl_channel_credentials(open(a.ca, "rb").read())
    channel = grpc.secure_channel(a.target, creds)
    out = {}

    def md(service="echo", key=a.key):
        m = [("scoregate-service", service)] if service else []
        return m + ([("authorization", f"Bearer {key}")] if key else [])

    def status(f):
        try:
            return {"ok": f()}
        except grpc.RpcError as e:
            return {"code": e.code().name, "details": e.details(),
                    "trailing": dict(e.trailing_metadata() or ())}

    count = channel.unary_stream("/test.Echo/Count")
    chat = channel.stream_stream("/test.Echo/Chat")
    sleep = channel.unary_unary("/test.Echo/Sleep")
    fail = channel.unary_unary("/test.Echo/Fail")

    # A server stream of 100 messages, complete, with its trailers.
    call = count(b"100", metadata=md(), timeout=30)
    msgs = [m.decode() for m in call]
    out["count"] = {"n": len(msgs), "first": msgs[0], "last": msgs[-1],
                    "code": call.code().name, "trailing": dict(call.trailing_metadata())}
    # Both ways at once: each echo read before the next message is sent.
    sent = []

    def requests():
        for i in range(5):
            while len(sent) > len(received):
                time.sleep(0.01)
            sent.append(i)
            yield f"m{i}".encode()

    received = []
    call = chat(requests(), metadata=md(), timeout=30)
    for r in call:
        received.append(r.decode())
    out["chat"] = {"received": received, "code": call.code().name,
                   "trailing": dict(call.trailing_metadata())}
    # The replica's own error status comes through.
    out["replica_error"] = status(lambda: fail(b"NOT_FOUND:no such thing", metadata=md(), timeout=30))
    # The gateway's refusals.
    out["no_key"] = status(lambda: sleep(b"1", metadata=md(key=None), timeout=30))
    out["wrong_key"] = status(lambda: sleep(b"1", metadata=md(key="wrong-key-0123456789"), timeout=30))
    out["unknown_service"] = status(lambda: sleep(b"1", metadata=md(service="nope"), timeout=30))
    out["no_service"] = status(lambda: sleep(b"1", metadata=md(service=None), timeout=30))
    out["http1_version"] = status(lambda: sleep(b"1", metadata=md(service="iris"), timeout=30))
    out["scoring_timeout"] = status(lambda: sleep(b"2000", metadata=md(service="slow"), timeout=30))
    # Saturation: one call holds the one slot of "single" (no queueing), a second is refused.
    holder = threading.Thread(target=lambda: sleep(b"1500", metadata=md(service="single"), timeout=30))
    holder.start()
    time.sleep(0.5)
    out["saturated"] = status(lambda: sleep(b"1", metadata=md(service="single"), timeout=30))
    holder.join()

    # Open Inference Protocol over gRPC: Triton's client to each service of --triton (KServe's
    # gRPC server, the demo model).
    t = tgrpc.InferenceServerClient(a.target, ssl=True, root_certificates=a.ca)

    def triton(f):
        try:
            return {"ok": f()}
        except InferenceServerException as e:
            return {"status": e.status(), "message": e.message()}

    def infer(headers):
        x = tgrpc.InferInput("measurements", [2, 4], "FP32")
        x.set_data_from_numpy(ROWS)
        r = t.infer("iris", [x], headers=headers)
        return [round(float(v), 4) for v in r.as_numpy("p_virginica")]

    for service in a.triton.split(","):
        hdr = {"authorization": f"Bearer {a.key}", "scoregate-service": service}
        out[f"triton/{service}"] = {
            "live": triton(lambda: t.is_server_live(headers=hdr)),
            "model_ready": triton(lambda: t.is_model_ready("iris", headers=hdr)),
            "metadata": triton(lambda: [i["shape"] for i in t.get_model_metadata(
                "iris", headers=hdr, as_json=True).get("inputs", [])]),
            "infer": triton(lambda: infer(hdr)),
            "no_key": triton(lambda: infer({"scoregate-service": service})),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
