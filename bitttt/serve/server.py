"""Runs `bitttt serve`: the engine on its thread, the app under uvicorn, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from bitttt.errors import ConfigError
from bitttt.serve.engine import Engine, EngineConfig

API_KEY_ENV = "BITTTT_API_KEY"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # loopback: other machines only when asked (--host 0.0.0.0)
    port: int = 8000
    api_key: str | None = None  # None: BITTTT_API_KEY if set, else no key
    model_name: str | None = None  # None: the model folder's name
    chat_format: bool = True
    max_body_bytes: int = 4 * 2**20
    default_max_tokens: int = 512
    log_level: str = "info"


def missing_extra() -> str | None:
    """What `pip install 'bitttt[serve]'` would add, if anything is missing."""
    missing = []
    for name in ("fastapi", "uvicorn", "prometheus_client"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return ", ".join(missing) or None


def model_name_of(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or "bitttt"


def serve(model: torch.nn.Module, tokenizer, model_path: str, engine_config: EngineConfig,
          options: ServeOptions) -> int:
    """Serves until interrupted; returns the exit code."""
    if (missing := missing_extra()) is not None:
        raise ConfigError(f"serve: {missing} not installed", hint="pip install 'bitttt[serve]'")
    import uvicorn

    from bitttt.serve.app import AppConfig, Server, build_app

    api_key = options.api_key if options.api_key is not None else os.environ.get(API_KEY_ENV) or None
    name = options.model_name or model_name_of(model_path)
    engine = Engine(model, tokenizer, engine_config).start()
    app = build_app(engine, AppConfig(name, options.chat_format, api_key, options.max_body_bytes,
                                      options.default_max_tokens))
    url = f"http://{options.host if ':' not in options.host else f'[{options.host}]'}:{options.port}/v1"
    print(f"bitttt serve: {name} at {url} (batch {engine_config.max_batch}, queue {engine_config.max_queue}, "
          f"state cache {engine_config.state_cache_mb:g} MB, {'API key required' if api_key else 'no API key'})",
          file=sys.stderr, flush=True)
    server = Server(uvicorn.Config(app, host=options.host, port=options.port, log_level=options.log_level,
                                   timeout_graceful_shutdown=5))
    try:
        server.run()
    finally:
        engine.close()
    return 0
