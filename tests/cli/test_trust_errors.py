"""Issue 27: inputs that gave exit 1, a traceback, an abort or a silent default now get one
clear line and design §6's exit code: sizes that cannot fit in memory (exit 4 before anything
is allocated), an unusable --run-dir, sampling and eval ranges, and one error form on the
terminal whichever part found the error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bitttt import cli, config
from bitttt.errors import EXIT_CONFIG, EXIT_DATA, EXIT_OOM

MICRO = ["--mixer", "ttt_linear", "--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--seq-len", "64",
         "--batch-size", "8", "--eval-tokens", "1024", "--threads", "1", "--steps", "2"]


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bitttt: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 400)
    return str(path)


# --- memory: refused before allocating ------------------------------------------------

TOO_BIG = {
    "n_embd": ["--n-embd", "1000000"],
    "n_layer": ["--n-layer", "1000000"],
    "mini_batch": ["--mini-batch", str(10**10)],  # 10**9 on 4 layers: 64 GB; here 2 layers, so more
    "intermediate_size": ["--config", "CONFIG"],  # intermediate_size 10**12, through a config file
    "batch": ["--batch-size", str(10**7), "--seq-len", "4096"],
}


@pytest.mark.parametrize("case", list(TOO_BIG))
def test_a_run_that_cannot_fit_is_exit_4_before_allocating(case, tmp_path, text_file, capsys):
    cfg_file = tmp_path / "big.json"
    cfg_file.write_text(json.dumps({"intermediate_size": 10**12}))
    flags = [str(cfg_file) if a == "CONFIG" else a for a in TOO_BIG[case]]
    run_dir = tmp_path / "run"
    args = ["train", *MICRO, *flags, "--data", text_file, "--run-dir", str(run_dir), "--log-format", "jsonl"]
    assert cli.main(args) == EXIT_OOM
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert "needs at least" in line and "GiB" in line and "free" in line
    events = [json.loads(x) for x in out.splitlines()]
    assert [e["event"] for e in events] == ["error", "done"] and events[0]["kind"] == "oom"
    assert not run_dir.exists()  # refused before the run existed: nothing to clean


def test_the_memory_bound_is_a_lower_bound_of_the_real_model():
    """The estimate counts fewer parameters than the model really has (so it never refuses a
    run that fits): the oracle is the built model's own parameter count."""
    from bitttt.model import BitTTTConfig, BitTTTForCausalLM

    t = config.TrainConfig()
    for mixer in config.MIXERS:
        for tie in (False, True):
            for extra in ({}, {"intermediate_size": 320, "mini_batch": 64, "conv_kernel": 0, "use_gate": False}):
                keys = {**config.defaults("tiny"), "mixer": mixer, "tie_embeddings": tie, **extra}
                model_keys = {k: keys[k] for k in config.MODEL_KEYS}
                real = BitTTTForCausalLM(BitTTTConfig(vocab_size=320, **model_keys)).num_params()
                bound = config.training_bytes_lower_bound(model_keys, t, 320)["parameters"] // config.BYTES_PER_PARAM
                assert real * 0.8 <= bound <= real, (mixer, tie, extra, bound, real)


def test_the_default_run_passes_the_memory_check():
    d = config.defaults("tiny")
    config.check_memory({k: d[k] for k in config.MODEL_KEYS}, config.TrainConfig(), "cpu")


def test_a_huge_bpe_vocabulary_is_refused_not_aborted():
    # 100M made tokenizers' trainer abort the process (Rust allocation failure, exit 134)
    r = subprocess.run([sys.executable, "-m", "bitttt", "train", "--tokenizer", "bpe", "--vocab-size", "100000000",
                        "--print-config"], capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "--vocab-size" in r.stderr and "1048576" in r.stderr and "Traceback" not in r.stderr


# --- the run directory ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["a file", "under a file", "not writable"])
def test_an_unusable_run_dir_is_exit_2(where, tmp_path, text_file, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    run_dir = {"a file": a_file, "under a file": a_file / "sub" / "run", "not writable": locked / "run"}[where]
    if where == "not writable":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        locked.chmod(0o500)
    code = cli.main(["train", *MICRO, "--data", text_file, "--run-dir", str(run_dir), "--log-format", "jsonl"])
    assert code == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert "--run-dir" in one_error_line(err)
    assert [json.loads(x)["event"] for x in out.splitlines()] == ["error", "done"]


def test_a_new_run_dir_under_missing_folders_is_made(tmp_path):
    config.check_run_dir(str(tmp_path / "runs" / "deeper" / "run"))  # as `--run-dir runs/notes` in the README


# --- one error form on the terminal ---------------------------------------------------


def test_a_data_error_in_text_mode_reads_like_every_other_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code = cli.main(["train", *MICRO, "--data", str(empty), "--run-dir", str(tmp_path / "run"),
                     "--log-format", "text"])
    assert code == EXIT_DATA
    out, err = capsys.readouterr()
    one_error_line(err)
    assert "error (" not in out  # was: `error (data): ...` on stdout, and nothing on stderr


# --- generate and eval ranges ---------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--temperature", "1e-300"), ("--repetition-penalty", "1e-300"),
                                         ("--temperature", "1e300"), ("--repetition-penalty", "0")])
def test_generate_refuses_a_sampling_value_that_overflows(tiny_model, flag, value, capsys):
    assert cli.main(["generate", "--model", tiny_model, "--prompt", "a", flag, value]) == EXIT_CONFIG
    assert flag.lstrip("-").replace("-", "_") in one_error_line(capsys.readouterr().err)


def test_generate_still_takes_the_edges_of_the_ranges(tiny_model, capsys):
    for flag, value in (("--temperature", "1e-4"), ("--repetition-penalty", "1e4"), ("--temperature", "0")):
        assert cli.main(["generate", "--model", tiny_model, "--prompt", "a", "--max-new-tokens", "3",
                         flag, value, "--seed", "1"]) == 0


@pytest.mark.parametrize("args", [["--seq-len", "0"], ["--seq-len", "-5"], ["--seq-len", str(10**9)],
                                  ["--max-tokens", "0"], ["--max-tokens", "-1"], ["--seq-len", "x"]])
def test_eval_refuses_out_of_range_windows(tiny_model, args, capsys):
    assert cli.main(["eval", "--model", tiny_model, *args]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "expected a whole number" in err and "Traceback" not in err


def test_eval_with_a_window_longer_than_the_text_is_a_data_error(tiny_model, text_file, capsys):
    assert cli.main(["eval", "--model", tiny_model, "--data", text_file, "--seq-len", "100000"]) == EXIT_DATA
    one_error_line(capsys.readouterr().err)


def test_a_held_out_set_shorter_than_one_window_is_a_data_error():
    # the run's own held-out split (eval without --data) took seq_len unchecked: IndexError
    import numpy as np

    from bitttt.errors import DataError
    from bitttt.evaluate import HeldOut
    from bitttt.tokenizer import ByteTokenizer

    with pytest.raises(DataError, match="less than one window of 100"):
        HeldOut.build(np.arange(50), 100, 1000, ByteTokenizer())
    assert HeldOut.build(np.arange(101), 100, 1000, ByteTokenizer()).n_tokens == 100
