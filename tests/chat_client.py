"""A jsonl chat server (bitttt.chat_server.chat_jsonl) on a thread, driven like a client does:
requests through a real pipe (so its reader thread blocks as on stdin), each line it writes an
event in a queue. Imported by name: tests/ is on sys.path (the rootdir conftest layout)."""

from __future__ import annotations

import io
import json
import os
import queue
import threading

from bitttt import chat_server
from bitttt.generate import ChatSession

TIMEOUT_S = 60


class Sink(io.TextIOBase):
    """stdout for the server: each complete line becomes an event in a queue."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self.events.put(json.loads(line))
        return len(s)


class Client:
    """The server on a thread; `send` requests, read events with `next`, `until` or `answer`."""

    def __init__(self, session: ChatSession) -> None:
        r, w = os.pipe()
        self.stdin, self.w = os.fdopen(r, "r"), os.fdopen(w, "w")
        self.out = Sink()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._serve, args=(session,), daemon=True)
        self.thread.start()
        assert self.next()["event"] == "ready"

    def _serve(self, session: ChatSession) -> None:
        self.code = chat_server.chat_jsonl(session, self.stdin, self.out)

    def send(self, *reqs: dict | str) -> None:
        """Each request as one line: a dict as JSON, a str as it is."""
        self.w.write("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in reqs))
        self.w.flush()

    def next(self) -> dict:
        return self.out.events.get(timeout=TIMEOUT_S)

    def until(self, name: str) -> list[dict]:
        """Events up to and including the first named `name`."""
        events = [self.next()]
        while events[-1]["event"] != name:
            events.append(self.next())
        return events

    def answer(self) -> list[dict]:
        """A reply's token events and the event that ends it."""
        events = [self.next()]
        while events[-1]["event"] == "token":
            events.append(self.next())
        return events

    def close(self) -> int | None:
        self.w.close()
        self.thread.join(TIMEOUT_S)
        return self.code
