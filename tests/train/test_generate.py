"""Generation, export, eval and chat on a finished micro run (design §5, §6)."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch

from bitttt import cli, export, generate
from bitttt.checkpoint import load_model
from bitttt.chat_server import chat_jsonl
from bitttt.generate import ChatSession, SamplingParams, generate_ids

pytestmark = pytest.mark.slow

GREEDY = SamplingParams(max_new_tokens=40, temperature=0)


def greedy_ids(path, prompt="The ", **kw) -> list[int]:
    model, tok, _ = load_model(str(path), **kw)
    return list(generate_ids(model, tok.encode(prompt), GREEDY))


def test_export_greedy_equals_checkpoint(micro_run, tmp_path):
    r = export.export(str(micro_run), str(tmp_path / "exp"))
    assert r["bytes"] < r["float16_bytes_estimate"]
    model, _, info = load_model(str(tmp_path / "exp"))
    assert model.is_packed and info["sections"]["format"]["weights"] == "bt2"
    from_export = greedy_ids(tmp_path / "exp")
    assert len(from_export) > 0
    assert from_export == greedy_ids(micro_run / "final", pack=True)


def test_generate_cli(micro_run, capsys):
    argv = ["generate", "--model", str(micro_run), "--prompt", "The ", "--temperature", "0", "--max-new-tokens", "20"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("The ")
    assert cli.main(argv[:-4] + ["--temperature", "1", "--top-k", "5", "--top-p", "0.9", "--repetition-penalty",
                                 "1.2", "--seed", "3", "--stop", "e"]) == 0
    out = capsys.readouterr().out
    assert "e" not in out[len("The "):]


def test_eval_cli(micro_run, capsys):
    assert cli.main(["eval", "--model", str(micro_run), "--json", "--max-tokens", "2048"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 0 < r["bits_per_byte"] < 8 and r["perplexity"] > 1 and r["packed"]


def _states_equal(a, b) -> bool:
    flat_a, flat_b = _tensors(a), _tensors(b)
    return len(flat_a) == len(flat_b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(flat_a, flat_b))


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if hasattr(x, "__dataclass_fields__"):
        return [t for f in x.__dataclass_fields__ for t in _tensors(getattr(x, f))] + \
            ([torch.tensor(x.pos)] if hasattr(x, "pos") else [])
    return []


def test_chat_state_reset_save_load(micro_run, tmp_path):
    model, tok, _ = load_model(str(micro_run))
    session = ChatSession(model, tok, chat_format=True, defaults=SamplingParams(max_new_tokens=10, temperature=0))
    initial = copy.deepcopy(session.cache)  # decode steps update the TTT state in place
    reply = "".join(session.reply([{"role": "user", "content": "My name is Ada."}]))
    assert isinstance(reply, str)
    assert not _states_equal(session.cache, initial)  # the fact changed the model's state
    session.save(str(tmp_path / "s.safetensors"))
    saved = copy.deepcopy(session.cache)
    session.reset()
    assert _states_equal(session.cache, initial)  # exactly the initial state
    session.load(str(tmp_path / "s.safetensors"))
    assert _states_equal(session.cache, saved)
    assert session.history[0]["content"] == "My name is Ada."


def test_chat_jsonl_protocol(micro_run, tmp_path):
    model, tok, _ = load_model(str(micro_run))
    session = ChatSession(model, tok, chat_format=False, defaults=SamplingParams(max_new_tokens=8, temperature=0))
    requests = [{"op": "generate", "prompt": "hello", "max_new_tokens": 5},
                {"op": "generate", "messages": [{"role": "user", "content": "again"}], "temperature": 0.5, "seed": 1},
                {"op": "save_state", "path": str(tmp_path / "c.safetensors")}, {"op": "reset"},
                {"op": "load_state", "path": str(tmp_path / "c.safetensors")}, {"op": "nope"}, "garbage", {"op": "stop"}]
    stdin = io.StringIO("\n".join(r if isinstance(r, str) else json.dumps(r) for r in requests) + "\n")
    stdout = io.StringIO()
    assert chat_jsonl(session, stdin, stdout) == 0
    events = [json.loads(line) for line in stdout.getvalue().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "ready" and names[-1] == "bye"
    assert names.count("done") == 2 and names.count("ok") == 3 and names.count("error") == 2
    done = [e for e in events if e["event"] == "done"]
    assert done[0]["n_tokens"] <= 5 and done[0]["tokens_per_s"] >= 0


def test_chat_text_commands(micro_run, tmp_path):
    from bitttt.generate import chat_text

    model, tok, _ = load_model(str(micro_run))
    session = ChatSession(model, tok, chat_format=False, defaults=SamplingParams(max_new_tokens=5, temperature=0))
    lines = ["/help", "/temp 0.5", "hello there", f"/save {tmp_path / 's.safetensors'}", "/reset", f"/load {tmp_path / 's.safetensors'}",
             "/load /nonexistent/x.safetensors", "/temp hot", "/quit"]
    out = io.StringIO()
    assert chat_text(session, io.StringIO("\n".join(lines) + "\n"), out) == 0
    text = out.getvalue()
    assert "/reset" in text and "(temperature 0.5)" in text and "model> " in text
    assert "(state reset)" in text and text.count("(error:") == 2
    assert session.history and session.history[0]["content"] == "hello there"


class LoopingLM(torch.nn.Module):
    """A deterministic stand-in for a small model that loops at temperature 0: after token t it
    always prefers t + 1 mod 5 (a 5-token cycle, like "'two': "), then the other tokens by id."""

    V = 64

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))   # a device for generate.model_device

    def forward(self, input_ids, labels=None, cache=None, use_cache=False, logits_to_keep=0):
        from bitttt.model import CausalLMOutput, ModelCache

        last = input_ids[0, -1].item()
        logits = torch.linspace(3.0, 1.0, self.V)
        logits[(last + 1) % 5] = 10.0
        pos = (cache.pos if cache is not None else 0) + input_ids.shape[1]
        return CausalLMOutput(logits.expand(1, input_ids.shape[1], self.V), None, ModelCache([], pos))


def _ngrams_repeat(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def test_chat_defaults_do_not_loop_at_temperature_zero():
    args = cli.build_parser().parse_args(["chat", "--model", "x", "--temperature", "0", "--max-new-tokens", "300"])
    chat = cli._sampling(args)
    plain = SamplingParams(max_new_tokens=300, temperature=0)
    looped = list(generate_ids(LoopingLM(), [0], plain))
    assert looped[:10] == [1, 2, 3, 4, 0, 1, 2, 3, 4, 0] and _ngrams_repeat(looped, 16)   # the stand-in loops
    ids = list(generate_ids(LoopingLM(), [0], chat))
    assert chat.no_repeat_ngram == 16 and len(ids) == 300
    assert not _ngrams_repeat([0] + ids, 16)


def test_sampling_params_reject_wrong_types():
    from bitttt.errors import ConfigError

    for bad in ({"temperature": "hot"}, {"max_new_tokens": 2.5}, {"top_k": True}, {"seed": -1}, {"stop": [1]},
                {"top_p": float("nan")}, {"no_repeat_ngram": -2}, {"bogus": 1}):
        with pytest.raises(ConfigError):
            SamplingParams.from_dict(bad)


@pytest.mark.parametrize("case", ["random", "ties", "nan", "all -inf", "strided"])
def test_greedy_token_is_torch_argmax(case):
    """The oracle is torch.argmax: the first largest logit, the first NaN where there is one."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(128256, generator=g)
    if case == "ties":
        logits[[7, 70000, 128255]] = 50.0
    elif case == "nan":
        logits[[900, 90000]] = float("nan")
    elif case == "all -inf":
        logits = torch.full((320,), float("-inf"))
    elif case == "strided":
        logits = torch.randn(320, 4, generator=g)[:, 2]
        logits[[3, 200]] = 9.0
    assert generate.greedy_token(logits) == int(logits.argmax())
    assert generate.greedy_token(logits.double()) == int(logits.double().argmax())  # the torch path
