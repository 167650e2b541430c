"""An OpenAI-compatible model server as vLLM and KServe build theirs: FastAPI on uvicorn,
server-sent events through Starlette's StreamingResponse (KServe's OpenAI endpoints need vLLM
itself, which needs a GPU stack; this is the same serving stack without the model).

Endpoints: POST /v1/chat/completions, /v1/completions (streaming with `"stream": true`: one
chunk per "token", `max_tokens` of them, `x-chunk-delay-ms` apart; then `data: [DONE]`),
POST /v1/embeddings (a 4-dimensional vector per input). Every request's life is written to
--events as JSON lines with a monotonic time: start, chunk, done, cancelled (the client went
away mid-stream and the server cancelled the generator).

    python openai_replica.py --port 8000 --events events.jsonl
"""
import argparse
import asyncio
import json
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

app = FastAPI()
EVENTS = None


def event(kind, rid, **kw):
    with open(EVENTS, "a") as f:
        f.write(json.dumps({"t": time.monotonic(), "event": kind, "id": rid, **kw}) + "\n")


async def stream(body, rid, delay, chat):
    n = int(body.get("max_tokens") or 5)
    model = body.get("model")
    try:
        for i in range(n):
            if i:
                await asyncio.sleep(delay)
            if chat:
                choice = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}
                obj = "chat.completion.chunk"
            else:
                choice = {"index": 0, "text": f"tok{i} ", "finish_reason": None}
                obj = "text_completion"
            chunk = {"id": rid, "object": obj, "created": int(time.time()), "model": model,
                     "choices": [choice]}
            event("chunk", rid, i=i)
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
        event("done", rid)
    except (asyncio.CancelledError, GeneratorExit):
        event("cancelled", rid)
        raise


async def completion(request: Request, chat: bool):
    body = await request.json()
    rid = request.headers.get("x-request-id") or request.headers.get("x-ms-request-id") or "r"
    delay = int(request.headers.get("x-chunk-delay-ms", "50")) / 1000
    event("start", rid, model=body.get("model"), stream=bool(body.get("stream")),
          path=request.url.path, authorization=request.headers.get("authorization"))
    if body.get("stream"):
        return StreamingResponse(stream(body, rid, delay, chat), media_type="text/event-stream")
    n = int(body.get("max_tokens") or 5)
    text = "".join(f"tok{i} " for i in range(n))
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": "length"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "length"}
    event("done", rid)
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": body.get("model"),
                         "choices": [choice],
                         "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}})


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    return await completion(request, True)


@app.post("/v1/completions")
async def completions(request: Request):
    return await completion(request, False)


@app.post("/v1/embeddings")
async def embeddings(request: Request):
    body = await request.json()
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    event("start", "embed", model=body.get("model"), path=request.url.path)
    data = [{"object": "embedding", "index": i, "embedding": [float(len(s)), 1.0, 0.0, -1.0]}
            for i, s in enumerate(inputs)]
    return {"object": "list", "data": data, "model": body.get("model"),
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}}


@app.get("/health")
async def health():
    return {"ok": True}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--events", required=True)
    a = ap.parse_args()
    EVENTS = a.events
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")
