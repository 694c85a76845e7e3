"""Fixtures of the serve tests: one real server (uvicorn on a free loopback port) over a tiny
model with an exact (int8) LM head, shared by the module that asks for it."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def server():
    from servelib import API_KEY, ServerThread, tiny_bitttt

    from bitttt.hf.bitnet import Int8Linear
    from bitttt.serve.app import AppConfig, build_app
    from bitttt.serve.engine import Engine, EngineConfig
    from bitttt.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    model = tiny_bitttt("ttt_linear", vocab_size=tok.vocab_size)
    model.lm_head = Int8Linear(model.lm_head.weight)
    engine = Engine(model, tok, EngineConfig(max_batch=4, max_queue=8, max_prompt_tokens=2000)).start()
    app = build_app(engine, AppConfig("tiny", chat_format=True, api_key=API_KEY, max_body_bytes=64 * 1024,
                                      default_max_tokens=16))
    with ServerThread(app) as s:
        s.engine, s.api_key = engine, API_KEY
        yield s
    engine.close()
