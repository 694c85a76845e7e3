"""End of sequence on a list: HF configs give eos_token_id as an int or a list, and
generation_config.json may add more; generation stops on any of them."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from bitttt.generate import ChatSession, SamplingParams, generate_ids, stream_text
from bitttt.hf import load_bitnet, load_hf_tokenizer, read_config
from bitttt.model import CausalLMOutput, ModelCache

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


class CountingLM(torch.nn.Module):
    """Prefers token (last + 1) mod V: after a prompt ending in 0 it yields 1, 2, 3, ..."""

    V = 16

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # a device for generate.model_device

    def forward(self, input_ids, labels=None, cache=None, use_cache=False, logits_to_keep=0):
        logits = torch.zeros(1, input_ids.shape[1], self.V)
        logits[0, -1, (input_ids[0, -1].item() + 1) % self.V] = 1.0
        pos = (cache.pos if cache is not None else 0) + input_ids.shape[1]
        return CausalLMOutput(logits, None, ModelCache([], pos))


def test_generation_stops_on_any_id_of_a_list():
    assert list(generate_ids(CountingLM(), [0], GREEDY, eos_ids=[9, 5])) == [1, 2, 3, 4]
    assert list(generate_ids(CountingLM(), [0], GREEDY, eos_ids={7})) == [1, 2, 3, 4, 5, 6]


def test_one_eos_id_as_an_int_still_stops():
    assert list(generate_ids(CountingLM(), [0], GREEDY, eos_ids=3)) == [1, 2]
    assert list(generate_ids(CountingLM(), [0], GREEDY)) == list(range(1, 13))  # no eos: max_new_tokens


def _copy_with(src: str, dst: str, config_eos, generation_eos=None) -> str:
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        d = json.load(f)
    d["eos_token_id"] = config_eos
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(d, f)
    if generation_eos is not None:
        with open(os.path.join(dst, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 256, "eos_token_id": generation_eos}, f)
    return dst


def test_hf_tokenizer_collects_every_eos_id(tiny, tmp_path):
    # tokenizer_config.json's eos_token is <|eot_id|>; config.json and generation_config.json add more.
    folder = _copy_with(tiny.packed, str(tmp_path / "f"), [257, 12], [258, 40])
    tok = load_hf_tokenizer(folder, read_config(folder))
    eot = tok.tok.token_to_id("<|eot_id|>")
    assert tok.eos_id == eot  # the turn's end marker the chat template writes
    assert tok.eos_ids == {eot, 257, 12, 258, 40}
    plain = load_hf_tokenizer(tiny.packed, read_config(tiny.packed))
    assert plain.eos_ids == {eot, 258}  # config.json's eos_token_id 258 stops too


def test_bad_generation_config_eos_is_a_clear_error(tiny, tmp_path):
    from bitttt.errors import ConfigError

    folder = _copy_with(tiny.packed, str(tmp_path / "f"), 258, ["<|eot_id|>"])
    with pytest.raises(ConfigError, match="generation_config.json"):
        load_hf_tokenizer(folder, read_config(folder))


def _greedy_free_run(folder: str, prompt: list[int], n: int) -> list[int]:
    return list(generate_ids(load_bitnet(folder, dtype=torch.float32), prompt, SamplingParams(max_new_tokens=n,
                                                                                              temperature=0.0)))


def _first_new(ids: list[int], start: int, eos_ids) -> int:
    """The first index >= start whose token has not come before and is no eos already."""
    return next(i for i, t in enumerate(ids) if i >= start and t not in ids[:i] and t not in eos_ids)


def test_hf_generation_stops_on_a_generation_config_eos(tiny, tmp_path):
    """The model's own greedy run says which token comes 5th; naming it in generation_config.json
    must end the text right before it."""
    prompt = [5, 17, 42, 99]
    free = _greedy_free_run(tiny.packed, prompt, 16)
    k = _first_new(free, 3, load_hf_tokenizer(tiny.packed, read_config(tiny.packed)).eos_ids)
    folder = _copy_with(tiny.packed, str(tmp_path / "f"), 258, [258, free[k]])
    tok = load_hf_tokenizer(folder, read_config(folder))
    model = load_bitnet(folder, dtype=torch.float32)
    result: dict = {}
    list(stream_text(model, tok, prompt, SamplingParams(max_new_tokens=16, temperature=0.0), None, result))
    assert result["ids"] == free[:k]
    assert result["pending"] == free[k]


def test_chat_turn_ended_by_a_second_eos_is_fed_once(tiny, tmp_path):
    """A reply that ends on an eos other than the template's is not followed by another eos."""
    folder = _copy_with(tiny.packed, str(tmp_path / "f"), 258)
    tok = load_hf_tokenizer(folder, read_config(folder))
    model = load_bitnet(folder, dtype=torch.float32)
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    session = ChatSession(model, tok, True, p)
    msg = [{"role": "user", "content": "hello"}]
    turn = tok.encode_chat(msg, add_assistant=True)
    free = list(generate_ids(model, turn, p, session.cache))
    k = _first_new(free, 2, tok.eos_ids)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [258, free[k]]}, f)
    session = ChatSession(model, load_hf_tokenizer(folder, read_config(folder)), True, p)
    start = session.cache.pos
    list(session.reply(msg))
    assert session.last_turn.n_tokens == k
    assert session.cache.pos == start + len(turn) + k + 1  # the reply, then its own eos only
