"""Chat memory files (safetensors + a JSON header, no pickles), where they may be written, and
the fast-weight drift report (design §6 "Chat server")."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bitttt import chat_memory
from bitttt.chat_memory import META_KEY, MemoryFileError
from bitttt.checkpoint import load_model
from bitttt.generate import ChatSession, SamplingParams
from trainlib import flat_tensors as _tensors  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def _session(path) -> ChatSession:
    model, tok, _ = load_model(str(path))
    return ChatSession(model, tok, chat_format=False, defaults=GREEDY)


def _say(session: ChatSession, text: str) -> str:
    return "".join(session.reply([{"role": "user", "content": text}]))


def _same(a, b) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return a.pos == b.pos and len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


@pytest.fixture
def session(tiny_model):
    return _session(tiny_model)


def test_round_trip_without_unpickling(session, tmp_path, monkeypatch):
    _say(session, "My name is Ada.")
    saved, history = copy.deepcopy(session.cache), list(session.history)
    path = tmp_path / "ada.safetensors"
    assert session.save(path) == path
    with safe_open(str(path), framework="pt") as f:          # a plain safetensors file with our header
        meta = json.loads(f.metadata()[META_KEY])
    assert meta["version"] == 1 and meta["pos"] == saved.pos and len(meta["fingerprint"]) == 32
    assert meta["history"][0]["content"] == "My name is Ada."
    session.reset()
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a memory file must not go through torch.load"))
    session.load(path)
    assert _same(session.cache, saved) and session.history == history
    assert _say(session, "What is my name?") is not None


def _refused(session: ChatSession, path, match: str) -> None:
    """load(path) fails with `match`, the state is untouched, and the chat goes on."""
    _say(session, "remember this")
    before, history = copy.deepcopy(session.cache), list(session.history)
    with pytest.raises(MemoryFileError, match=match):
        session.load(path)
    assert _same(session.cache, before) and session.history == history
    _say(session, "still here?")
    assert session.last_turn.n_tokens > 0 and session.cache.pos > before.pos


def test_memory_of_another_model_is_refused(session, make_tiny_model, tmp_path):
    other = _session(make_tiny_model(tmp_path / "other", seed=1))
    _say(other, "hello")
    other.save(tmp_path / "other.safetensors")
    _refused(session, tmp_path / "other.safetensors", "another model")


@pytest.mark.parametrize("damage", ["truncated", "header", "nan", "shape", "not_safetensors", "missing"])
def test_damaged_memory_is_refused(session, tmp_path, damage):
    path = tmp_path / "m.safetensors"
    _say(session, "hello")
    session.save(path)
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) - 100])
    elif damage == "header":
        path.write_bytes(raw[:8] + b"X" + raw[9:])  # break the JSON header
    elif damage in ("nan", "shape"):
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        tensors = load_file(str(path))
        name = next(k for k in tensors if k.endswith(".W"))
        tensors[name] = tensors[name].fill_(float("nan")) if damage == "nan" else tensors[name][..., :-1].contiguous()
        save_file(tensors, str(path), metadata=meta)
    elif damage == "not_safetensors":
        path.write_bytes(b"\x00" * 64)
    else:
        path.unlink()
    _refused(session, path, {"missing": "no such file"}.get(damage, "chat memory"))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_old_pickle_is_refused_and_not_run(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"cache": _RunsCode(), "history": []}, tmp_path / "old.pt")
    _refused(session, tmp_path / "old.pt", "old pickled memory file")
    assert not (tmp_path / "pwned").exists()


def test_every_header_length_loads(session, tmp_path):
    """Issue 27: a header length whose low byte is 0x80 (pickle's first byte) was taken for a
    pickle. Saved files (safetensors pads headers to 8 bytes: 32 residues) and hand-built
    headers of every length mod 256 all load."""
    _say(session, "hi")
    residues = set()
    for k in range(300):  # the history grows a byte at a time: the header through every padded residue
        path = tmp_path / f"m{k}.safetensors"
        chat_memory.write_memory(path, session.model, session.cache, [{"role": "user", "content": "x" * k}])
        residues.add(int.from_bytes(path.read_bytes()[:8], "little") % 256)
        cache, history = chat_memory.read_memory(path, session.model, session.cache)
        assert _same(cache, session.cache) and history[0]["content"] == "x" * k
        path.unlink()
    assert residues == set(range(0, 256, 8))
    session.save(tmp_path / "base.safetensors")
    raw = (tmp_path / "base.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header, data = raw[8:8 + n].rstrip(b" "), raw[8 + n:]
    for r in range(256):
        h = header + b" " * ((r - len(header)) % 256)
        path = tmp_path / f"r{r}.safetensors"
        path.write_bytes(len(h).to_bytes(8, "little") + h + data)
        assert chat_memory.read_meta(path)["format"] == chat_memory.FORMAT, r
        session.load(path)


def test_save_refuses_model_folders_and_other_files(session, tiny_model, tmp_path):
    before = {f: (os.path.join(tiny_model, f), open(os.path.join(tiny_model, f), "rb").read())
              for f in os.listdir(tiny_model)}
    for target in (os.path.join(tiny_model, "model.safetensors"), os.path.join(tiny_model, "memory.safetensors"),
                   os.path.join(tiny_model, "config.json")):
        with pytest.raises(MemoryFileError, match="model or checkpoint folder"):
            session.save(target)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(MemoryFileError, match="not a chat memory file"):
        session.save(notes)
    with pytest.raises(MemoryFileError, match="is a folder"):
        session.save(tmp_path)
    with pytest.raises(MemoryFileError, match="does not exist"):
        session.save(tmp_path / "no" / "such" / "m.safetensors")
    assert notes.read_text() == "mine" and not (tmp_path / "no").exists()
    assert sorted(os.listdir(tiny_model)) == sorted(before)
    assert all(open(p, "rb").read() == data for p, data in before.values())
    session.save(tmp_path / "m.safetensors")
    session.save(tmp_path / "m.safetensors")  # a memory file may be replaced
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors", "notes.txt"]   # no temporary left behind


def test_state_root_confines_paths(tmp_path):
    root = tmp_path / "states"
    root.mkdir()
    assert chat_memory.resolve_state_path("a.safetensors", str(root)) == root / "a.safetensors"
    (root / "link").symlink_to(tmp_path)
    for bad in ("../a.safetensors", str(tmp_path / "a.safetensors"), "link/a.safetensors", "", "a\x00b"):
        with pytest.raises(MemoryFileError):
            chat_memory.resolve_state_path(bad, str(root))


def test_drift_grows_with_the_conversation_and_reset_zeroes_it(session):
    zero = session.memory()
    assert zero["layers"] == [0, 1] and zero["drift"] == [0.0, 0.0] and zero["turn_change"] == [0.0, 0.0]
    _say(session, "The sky is green today.")
    one = session.last_turn.memory
    assert all(d > 0 for d in one["drift"]) and one["turn_change"] == one["drift"]   # turn 1 starts at 0
    _say(session, "And the grass is blue.")
    two = session.last_turn.memory
    for d1, d2, c in zip(one["drift"], two["drift"], two["turn_change"]):
        assert c > 0 and abs(d2 - d1) <= c + 1e-6 and c <= d1 + d2 + 1e-6      # triangle inequality
    session.reset()
    assert session.memory()["drift"] == [0.0, 0.0]


@pytest.mark.parametrize("mixer", ["ttt_mlp", "attention"])
def test_round_trip_other_mixers(make_tiny_model, tmp_path, mixer):
    session = _session(make_tiny_model(tmp_path / mixer, mixer=mixer))
    _say(session, "first")
    session.save(tmp_path / "m.safetensors")
    saved = copy.deepcopy(session.cache)
    _say(session, "second, longer than the first turn")    # an attention cache grows: other shapes
    session.load(tmp_path / "m.safetensors")
    assert _same(session.cache, saved)
    _say(session, "after the load")
    layers = session.last_turn.memory["layers"]
    assert layers == ([] if mixer == "attention" else [0, 1])
