"""A gRPC server on grpcio (the real library) with a raw-bytes service `test.Echo` (generic
handlers, no generated code), for the gateway's pass-through tests:

  Count  (server streaming)  request b"<n>" -> n messages b"msg-<i>", trailing metadata x-count
  Chat   (bidi streaming)    each message m -> b"echo-" + m, trailing metadata x-echoed
  Sleep  (unary)             request b"<ms>" -> sleeps, then b"slept"
  Fail   (unary)             request b"<CODE>:<message>" -> aborts with that status

    python grpc_replica.py --port 50051
"""
import argparse
import time
from concurrent import futures

import grpc


def count(request, context):
    n = int(request.decode())
    for i in range(n):
        yield f"msg-{i}".encode()
    context.set_trailing_metadata((("x-count", str(n)),))


def chat(requests, context):
    n = 0
    for m in requests:
        n += 1
        yield b"echo-" + m
    context.set_trailing_metadata((("x-echoed", str(n)),))


def sleep(request, context):
    time.sleep(int(request.decode()) / 1000)
    return b"slept"


def fail(request, context):
    code, message = request.decode().split(":", 1)
    context.abort(getattr(grpc.StatusCode, code), message)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Count": grpc.unary_stream_rpc_method_handler(count),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{a.port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
