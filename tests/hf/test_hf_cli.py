"""`bitttt generate | chat | eval | info --model HF_FOLDER` on the tiny folders."""

from __future__ import annotations

import io
import json

import torch
import torch.nn.functional as F

from bitttt import cli, data, evaluate
from bitttt.hf import load
from bitttt.ops import bt2_padded_k

PROMPT = "the quick brown"


def hf_greedy(model, ids: list[int], steps: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_generate_prints_transformers_greedy_continuation(tiny, capsys):
    _, tok, _ = load(tiny.packed)
    expected = tok.decode(hf_greedy(tiny.hf_model("packed"), tok.encode(PROMPT), 12))
    assert cli.main(["generate", "--model", tiny.packed, "--prompt", PROMPT, "--temperature", "0",
                     "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == PROMPT + expected + "\n"


def test_chat_prompt_is_the_folders_template(tiny):
    from transformers import AutoTokenizer

    _, tok, info = load(tiny.packed)
    assert info["sections"]["data"]["chat"]
    messages = [{"role": "user", "content": "hello world"}]
    ref = AutoTokenizer.from_pretrained(tiny.packed).apply_chat_template(messages, add_generation_prompt=True,
                                                                          tokenize=True, return_dict=False)
    assert [tok.bos_id] + tok.encode_chat(messages, add_assistant=True) == list(ref)


def test_chat_jsonl_replies(tiny, monkeypatch, capsys):
    # no stop: the end of input comes after the reply (a stop sent during it would cancel it)
    requests = [{"op": "generate", "prompt": "hello", "max_new_tokens": 4, "temperature": 0}]
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(json.dumps(r) + "\n" for r in requests)))
    assert cli.main(["chat", "--model", tiny.packed, "--protocol", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events][0] == "ready"
    assert next(e for e in events if e["event"] == "done")["n_tokens"] == 4


def test_eval_loss_equals_transformers(tiny, tmp_path, capsys):
    text = tmp_path / "eval.txt"
    text.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 30))
    assert cli.main(["eval", "--model", tiny.packed, "--data", str(text), "--seq-len", "32", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    _, tok, _ = load(tiny.packed)
    tokens = evaluate._all_tokens([str(text)], tok, 32, str(tmp_path))
    starts = data.eval_windows(tokens, 32, 65536)
    x, y = data.window_batch(tokens, starts, 32, torch.device("cpu"))
    with torch.no_grad():
        logits = tiny.hf_model("packed")(x).logits
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    assert abs(got["loss"] - ref) < 1e-4 and got["tokens"] == len(starts) * 32


def test_info_reports_parameters_and_decode_bytes(tiny, capsys):
    from transformers import BitNetForCausalLM

    assert cli.main(["info", "--model", tiny.packed, "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["model"]
    c = tiny.hf_model("packed").config
    master = BitNetForCausalLM(c.__class__(**{k: v for k, v in c.to_dict().items() if k != "quantization_config"}))
    assert m["parameters"] == sum(p.numel() for p in master.parameters())
    C, I, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    rows_in = [(2 * C, C), (C, C), (2 * I, C), (C, I)]  # q|k|v (k, v: 2 of 4 heads each), o, gate|up, down
    ternary = L * sum(n * bt2_padded_k(k) // 4 + 4 * n for n, k in rows_in)
    b = m["decode_bytes_per_token"]
    assert b["ternary"] == ternary and b["lm_head"] == V * C * 4 and b["embedding_row"] == C * 4
    assert b["kv_cache_per_context_token"] == 2 * L * c.num_key_value_heads * (C // c.num_attention_heads) * 4
    assert cli.main(["info", "--model", tiny.packed]) == 0
    assert "bytes per token:" in capsys.readouterr().out
