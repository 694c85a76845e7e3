"""Helpers for the serve tests (imported by name: pytest puts this folder on sys.path): tiny
models made here (nothing downloaded) and a real server on a free loopback port."""

from __future__ import annotations

import json
import os
import threading
import time

import torch

from bitttt.model import BitTTTConfig, BitTTTForCausalLM

API_KEY = "test-key-123"


def tiny_bitttt(mixer: str = "ttt_linear", conv_kernel: int = 0, seed: int = 0, vocab_size: int = 300) -> BitTTTForCausalLM:
    """A random-init 2-layer packed BitTTT model (mini-batch 8, so prompts cross boundaries)."""
    torch.manual_seed(seed)
    config = BitTTTConfig(n_layer=2, n_embd=64, n_head=2, mixer=mixer, mini_batch=8, conv_kernel=conv_kernel,
                          vocab_size=vocab_size)
    return BitTTTForCausalLM(config).pack().eval()


def tiny_bitnet(path: str, seed: int = 0):
    """A random tiny Hugging Face BitNet folder (GQA 4/2 heads, packed codes as HF stores them),
    loaded with bitttt's loader; written the way bitttt.bench.bitnet.write_folder writes the 2B one."""
    from safetensors.torch import save_file

    from bitttt.hf import load_bitnet

    os.makedirs(path, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    C, I, V, L, H, Hkv = 64, 128, 300, 2, 4, 2
    kv = Hkv * C // H
    c = dict(vocab_size=V, hidden_size=C, intermediate_size=I, num_hidden_layers=L, num_attention_heads=H,
             num_key_value_heads=Hkv, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
             tie_word_embeddings=False, hidden_act="relu2", bos_token_id=256, eos_token_id=257, model_type="bitnet",
             architectures=["BitNetForCausalLM"], dtype="float32",
             quantization_config={"quant_method": "bitnet", "linear_class": "bitlinear",
                                  "quantization_mode": "offline"})
    shapes = {"self_attn.q_proj": (C, C), "self_attn.k_proj": (kv, C), "self_attn.v_proj": (kv, C),
              "self_attn.o_proj": (C, C), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    t = {"model.embed_tokens.weight": torch.randn(V, C, generator=g), "model.norm.weight": torch.ones(C),
         "lm_head.weight": torch.randn(V, C, generator=g) * 0.1}
    for i in range(L):
        p = f"model.layers.{i}"
        for name, (N, K) in shapes.items():
            codes = torch.randint(0, 3, (4, N // 4, K), generator=g, dtype=torch.uint8)
            t[f"{p}.{name}.weight"] = codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6
            t[f"{p}.{name}.weight_scale"] = torch.tensor([4.0])
        for name, n in (("input_layernorm", C), ("post_attention_layernorm", C), ("self_attn.attn_sub_norm", C),
                        ("mlp.ffn_sub_norm", I)):
            t[f"{p}.{name}.weight"] = torch.ones(n)
    save_file(t, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(c, f)
    return load_bitnet(path).eval()


class ServerThread:
    """uvicorn serving an app on 127.0.0.1 at a free port (port 0: the OS picks), in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
