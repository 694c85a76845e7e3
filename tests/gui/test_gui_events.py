import json

import pytest

from bitttt_gui.events import explain_exit, fmt_bytes, parse_line, read_events

STEP = {"event": "step", "time": 1.0, "step": 5, "total_steps": 10, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5,
        "tokens_per_s": 1234.0, "elapsed_s": 10, "eta_s": 10, "mem_bytes": 3 << 20}


def test_valid_event_round_trips():
    assert parse_line(json.dumps(STEP) + "\n") == STEP
    assert parse_line(json.dumps(STEP).encode() + b"\r\n") == STEP


@pytest.mark.parametrize("line", [
    "", "   ", "plain text", "Traceback (most recent call last):", '{"event": "step", "step": ',
    "[1, 2]", "{}", '{"no_event": 1}', '{"event": 3}', '{"event": "raw", "text": "spoof"}', "{" * 5000 + "}" * 5000,
    '{"event": "step"} trailing', "\x00\x01\xff", "NaN",
])
def test_garbage_becomes_raw_and_never_raises(line):
    ev = parse_line(line)
    assert ev["event"] == "raw"
    assert ev["text"] == line.rstrip("\r\n")


def test_invalid_utf8_bytes_are_replaced():
    assert parse_line(b"\xff\xfe oops")["event"] == "raw"


def test_read_events_skips_raw_lines_and_missing_files(tmp_path):
    p = tmp_path / "events.jsonl"
    p.write_text(json.dumps(STEP) + "\ngarbage\n" + '{"event": "done", "reason": "completed"')  # last line cut
    assert [e["event"] for e in read_events(p)] == ["step"]
    assert list(read_events(tmp_path / "missing.jsonl")) == []


def test_formatters():
    assert fmt_bytes(1536) == "1.5 KiB" and fmt_bytes(None) == "?"


@pytest.mark.parametrize("code,error,expect", [
    (4, {"kind": "oom", "message": "CUDA out of memory", "hint": "lower --batch-size"}, "Out of memory: CUDA out of memory. lower --batch-size"),
    (3, {"kind": "data", "message": "cannot read /x.txt"}, "Data error: cannot read /x.txt"),
    (2, {"kind": "config", "message": "bad n_head in cfg.json"}, "Configuration error: bad n_head in cfg.json"),
])
def test_explain_exit_codes(code, error, expect):
    sev, msg = explain_exit(code, error)
    assert sev == "error" and msg.startswith(expect)


def test_explain_crash_shows_last_traceback_lines():
    sev, msg = explain_exit(1, None, None, ["Traceback (most recent call last):", '  File "x.py"', "RuntimeError: boom", ""])
    assert sev == "error" and msg.endswith("RuntimeError: boom") and "crashed" in msg


def test_explain_clean_exits():
    assert explain_exit(0, done={"reason": "stopped", "step": 7, "path": "/ck"}) == \
        ("ok", "Training stopped on request at step 7; last checkpoint: /ck.")
    assert explain_exit(0)[1] == "Training completed."
    assert explain_exit(-9)[0] == "warn"
