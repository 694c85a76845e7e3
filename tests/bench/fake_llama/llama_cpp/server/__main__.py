"""A fake `python -m llama_cpp.server`: the real one's command line (the options the bench
passes) and its wire protocol, in the standard library: GET /v1/models, and POST
/v1/completions streamed as sse-starlette sends it (HTTP/1.1 chunked, `data: {json}` events
ended by CRLF CRLF, `: ping` comments, a last chunk with finish_reason, then `data: [DONE]`).
One request at a time, as the real server's lock. Tokens are "<tN>" (the bench GGUF's byte
vocabulary's placeholders); the number of requests served is appended to FAKE_LLAMA_LOG."""

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

p = argparse.ArgumentParser()
for name in ("--model", "--model_alias", "--host", "--port", "--n_threads", "--n_threads_batch", "--n_ctx",
             "--interrupt_requests"):
    p.add_argument(name, required=True)
args = p.parse_args()
assert os.path.isfile(args.model), args.model
assert args.interrupt_requests == "False"  # else a waiting request cuts the running one short
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": args.model_alias, "object": "model",
                                                         "owned_by": "me", "permissions": []}]})
        else:
            self._json(404, {"detail": "Not Found"})

    def _chunk(self, text: str):
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/completions" or not isinstance(body.get("prompt"), str) or not body.get("stream"):
            return self._json(400, {"error": "the fake serves streaming completions only"})
        with lock:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(": ping - 2026-01-01 00:00:00.000000\r\n\r\n")
            base = {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": args.model_alias}
            for i in range(body["max_tokens"]):
                time.sleep(0.002)
                choice = {"text": f"<t{1000 + i}>", "index": 0, "logprobs": None, "finish_reason": None}
                self._chunk("data: " + json.dumps({**base, "choices": [choice]}) + "\r\n\r\n")
            last = {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}
            self._chunk("data: " + json.dumps({**base, "choices": [last]}) + "\r\n\r\n")
            self._chunk("data: [DONE]\r\n\r\n")
            self._chunk("")
            with open(os.environ["FAKE_LLAMA_LOG"], "a") as f:
                f.write(f"{body['max_tokens']}\n")


ThreadingHTTPServer((args.host, int(args.port)), Handler).serve_forever()
