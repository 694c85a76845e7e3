"""`bitttt serve`: an OpenAI-compatible HTTP server with continuous batching and a conversation
state cache (docs/serve.md).

engine.py is the work (slots, batching, the state cache: plain Python over the model);
state_cache.py the LRU of conversation states; protocol.py OpenAI's request bodies; app.py the
FastAPI routes; server.py loads a model and runs uvicorn. FastAPI, uvicorn and prometheus_client
come with the `serve` extra (`pip install 'bitttt[serve]'`): only protocol, app and server
import them, and `import bitttt` never imports this package.
"""
