"""The OpenAI Python client (the real `openai` library, over httpx) against a scoregate
gateway: streamed and whole chat completions, a streamed completion, embeddings, the gateway's
refusals, a client that hangs up mid-stream, a stream the gateway cuts off. Prints one JSON
object with what happened and when (time.monotonic(), the clock the replica's events use).

    python openai_client.py --base https://localhost:8443/v1 --ca ca.pem --key K --embed-key K2 [--http2]
"""
import argparse
import json
import time

import httpx
import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--embed-key", required=True)
    ap.add_argument("--http2", action="store_true")
    a = ap.parse_args()
    tag = "h2" if a.http2 else "h1"

    def client(key):
        return openai.OpenAI(base_url=a.base, api_key=key, max_retries=0, timeout=30,
                             http_client=httpx.Client(verify=a.ca, http2=a.http2))

    chat = client(a.key)
    out = {}

    def err(f):
        try:
            f()
            return {"raised": None}
        except openai.APIStatusError as e:
            return {"raised": type(e).__name__, "status": e.status_code, "message": e.message}

    # A stream of 10 chunks, 200 ms apart: each chunk's arrival time.
    sent = time.monotonic()
    stream = chat.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=10,
        extra_headers={"x-chunk-delay-ms": "200", "x-ms-request-id": f"stream-{tag}"})
    arrivals, text = [], []
    for chunk in stream:
        arrivals.append(time.monotonic())
        text.append(chunk.choices[0].delta.content)
    out["stream"] = {"sent": sent, "arrivals": arrivals, "text": "".join(text)}

    whole = chat.chat.completions.create(model="chat", max_tokens=3,
                                         messages=[{"role": "user", "content": "hi"}])
    out["whole"] = whole.choices[0].message.content

    comp = chat.completions.create(model="chat", prompt="x", stream=True, max_tokens=3,
                                   extra_headers={"x-chunk-delay-ms": "10"})
    out["completion_stream"] = "".join(c.choices[0].text for c in comp)

    emb = client(a.embed_key).embeddings.create(model="embed", input=["ab", "abc"])
    out["embeddings"] = [d.embedding for d in emb.data]

    out["unknown_model"] = err(lambda: chat.chat.completions.create(
        model="nope", messages=[{"role": "user", "content": "hi"}]))
    out["wrong_key"] = err(lambda: client("wrong-key-0123456789").chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]))
    out["other_services_key"] = err(lambda: client(a.key).embeddings.create(
        model="embed", input=["ab"]))
    out["no_model"] = err(lambda: chat.post("/chat/completions", cast_to=object,
                                            body={"messages": []}))

    # Hang up after the first chunk of fifty, the next due in 3 s (a model thinking): the
    # gateway must notice the hang-up itself, not at its next write.
    stream = chat.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=50,
        extra_headers={"x-chunk-delay-ms": "3000", "x-ms-request-id": f"hangup-{tag}"})
    next(iter(stream))
    stream.close()
    out["hangup"] = {"closed": time.monotonic()}

    # A replica that pauses longer than the service's stream_idle_timeout_ms.
    got, raised = 0, None
    try:
        for _ in chat.chat.completions.create(
                model="slow", messages=[{"role": "user", "content": "hi"}], stream=True,
                max_tokens=5, extra_headers={"x-chunk-delay-ms": "1500",
                                             "x-ms-request-id": f"idle-{tag}"}):
            got += 1
    except Exception as e:  # what the library raises for a stream cut short
        raised = type(e).__name__
    out["idle_cut"] = {"chunks": got, "raised": raised}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
