"""``bitttt serve`` for the Chat tab's "Serve this model", as data; tkinter-free.

The server is a child process like ``bitttt chat``: this module builds its command line, picks a
free loopback port, probes ``GET /health`` (stdlib ``urllib``, on a worker thread that posts to a
queue the Tk loop drains) and writes the snippets a client needs. ``bitttt serve`` prints its URL
before uvicorn binds the port, so the printed line is not "ready": a 200 from /health is.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .command import bitttt_command
from .process import Output

HOST = "127.0.0.1"          # loopback only: the launcher never serves other machines
PROBE_INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 1.0
INSTALL_HINT = "pip install 'bitttt[serve]'"
ERROR_PREFIX = "bitttt: error: "


def free_port(host: str = HOST) -> int:
    """A port nobody listens on now (the OS picks it); the server binds it a moment later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def model_id(model: str) -> str:
    """The id clients send: the folder's name, with its run's in front for a checkpoint (a run folder
    is served from its final/ or latest checkpoint, which the server would otherwise name "final")."""
    path = Path(model).expanduser()
    name = path.name or "bitttt"
    if name == "final" or name.startswith("step-"):
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return f"{run.name}-{name}" if run.name else name
    return name


def build_serve_argv(model: str, port: int, host: str = HOST, base: list[str] | None = None) -> list[str]:
    return list(base if base is not None else bitttt_command()) + [
        "serve", "--model", str(model), "--host", host, "--port", str(port), "--model-name", model_id(model)]


def base_url(port: int, host: str = HOST) -> str:
    """What OpenAI clients take as ``base_url``."""
    return f"http://{host}:{port}/v1"


def health(port: int, host: str = HOST, timeout: float = PROBE_TIMEOUT_S) -> dict | None:
    """The server's /health answer when it says ok; None while it is not up (refused, timed out, not ok)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout) as r:
            body = json.loads(r.read().decode("utf-8"))
    except (OSError, ValueError):   # URLError and refused connections are OSErrors
        return None
    return body if isinstance(body, dict) and body.get("status") == "ok" else None


class HealthProbe:
    """Polls /health until the server answers, the child is gone or ``cancel()``; then posts
    ``Output("ready", text=<model id>, source="serve")`` to ``out`` (only on success)."""

    def __init__(self, port: int, out: queue.Queue, alive: Callable[[], bool], interval_s: float = PROBE_INTERVAL_S):
        self.port, self.out, self.alive, self.interval_s = port, out, alive, interval_s
        self._cancel = threading.Event()

    def start(self) -> "HealthProbe":
        threading.Thread(target=self._run, daemon=True, name="serve-probe").start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def _run(self) -> None:
        while not self._cancel.is_set() and self.alive():
            answer = health(self.port)
            if answer is not None:
                if not self._cancel.is_set():
                    self.out.put(Output("ready", str(answer.get("model", "")), source="serve"))
                return
            self._cancel.wait(self.interval_s)


def failure_line(lines: list[str]) -> str:
    """The sentence that says why the server ended: its ``bitttt: error:`` line, else its last
    non-empty output line (uvicorn's "address already in use", a traceback's last line)."""
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX):]
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return "it exited without a message"


def curl_line(url: str, model: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 50})
    return f"curl {url}/chat/completions -H 'Content-Type: application/json' -d '{body}'"


def openai_snippet(url: str, model: str) -> str:
    return ("from openai import OpenAI\n"
            f"client = OpenAI(base_url={url!r}, api_key='none')\n"
            f"reply = client.chat.completions.create(model={model!r}, "
            "messages=[{'role': 'user', 'content': 'Hello'}], max_tokens=50)\n"
            "print(reply.choices[0].message.content)\n")


@dataclass
class ServeState:
    """What the Chat tab's serve row shows. ``phase``: off, starting, serving, stopping, stopped, failed."""

    phase: str = "off"
    port: int | None = None
    model: str = ""             # the id clients send (from /health)
    error: str = ""
    since: float = 0.0          # time.monotonic() of the last change

    @property
    def url(self) -> str:
        return base_url(self.port) if self.port else ""

    def to(self, phase: str, **fields) -> "ServeState":
        return ServeState(**{**self.__dict__, "phase": phase, "since": time.monotonic(), **fields})

    def sentence(self) -> str:
        if self.phase == "starting":
            return f"Starting the server on port {self.port} (loading the model)…"
        if self.phase == "serving":
            return f"Serving {self.model} at {self.url} (OpenAI API, this computer only)"
        if self.phase == "stopping":
            return "Stopping the server…"
        if self.phase == "stopped":
            return "Server stopped."
        if self.phase == "failed":
            # The CLI's own line names the extra to install; a shorter message gets the hint here.
            hint = f" Install it with: {INSTALL_HINT}" if "not installed" in self.error and \
                INSTALL_HINT not in self.error else ""
            return f"The server failed: {self.error}{hint}"
        return "Not serving. Serve this model: an OpenAI-compatible API on this computer."
