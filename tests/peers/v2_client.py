"""The Open Inference Protocol (v2) REST client of Triton (`tritonclient.http`, the real library)
against a scoregate gateway over TLS with key auth. Prints one JSON object: what each call
returned or the error the library raised (status and message), for the Rust test to check.

    python v2_client.py --url localhost:8443 --ca ca.pem --key KEY --model iris --version blue
"""
import argparse
import json

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--model", default="iris")
    ap.add_argument("--version", default="")
    a = ap.parse_args()
    client = httpclient.InferenceServerClient(
        url=a.url, ssl=True, ssl_options={"ca_certs": a.ca}, network_timeout=30.0)
    auth = {"Authorization": f"Bearer {a.key}"}
    out = {}

    def call(name, f):
        try:
            out[name] = {"ok": f()}
        except InferenceServerException as e:
            out[name] = {"status": e.status(), "message": e.message()}

    def infer(model, version="", headers=auth, request_id="req-1"):
        # tritonclient sends a JSON-only request without a Content-Type; KServe takes a body
        # without `application/json` for the binary extension. Said here, as a user of the two
        # would say it.
        headers = {**headers, "Content-Type": "application/json"}
        inp = httpclient.InferInput("measurements", list(ROWS.shape), "FP32")
        inp.set_data_from_numpy(ROWS, binary_data=False)
        r = client.infer(model, [inp], model_version=version, headers=headers,
                         request_id=request_id,
                         outputs=[httpclient.InferRequestedOutput("p_virginica", binary_data=False)])
        return {"id": r.get_response().get("id"),
                "model_version": r.get_response().get("model_version"),
                "p_virginica": [round(float(x), 4) for x in r.as_numpy("p_virginica")]}

    call("server_live", client.is_server_live)
    call("server_ready", client.is_server_ready)
    call("server_metadata", client.get_server_metadata)
    call("model_ready", lambda: client.is_model_ready(a.model, a.version))
    call("model_metadata", lambda: client.get_model_metadata(a.model, a.version)["name"])
    call("infer", lambda: infer(a.model))
    call("infer_version", lambda: infer(a.model, a.version))
    call("infer_no_key", lambda: infer(a.model, headers={}))
    call("infer_wrong_key", lambda: infer(a.model, headers={"Authorization": "Bearer wrong"}))
    call("infer_unknown_model", lambda: infer("no-such-model"))
    call("infer_unknown_version", lambda: infer(a.model, "no-such-version"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
