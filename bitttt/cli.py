"""The `bitttt` command line (docs/design.md §6b): argparse subcommands over the feature modules.

Each subcommand is one `add_<cmd>_parser()` with an `examples:` epilog and a `_run_<cmd>()`
that imports its feature module only when it runs. `main` alone turns bitttt's exceptions
into the exit codes of design §6 (bitttt.errors): 2 bad arguments, config or setting (one
line, never a traceback), 3 data error, 4 out of memory, 5 training diverged, 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from bitttt import __version__
from bitttt.events import error_line, safe_print
from bitttt.errors import (  # noqa: F401 (EXIT_* re-exported for scripts and tests)
    EXIT_CONFIG, EXIT_DATA, EXIT_DIVERGED, EXIT_ERROR, EXIT_OK, EXIT_OOM, BitttError, ConfigError, DataError, is_out_of_memory)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what is wrong and where to read more), exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _subparser(sub: argparse._SubParsersAction, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)  # keeps the examples' lines


# ---------------------------------------------------------------------------------------
# Argument types: a bad value exits 2 with argparse's usage line
# ---------------------------------------------------------------------------------------


MAX_EVAL_SEQ_LEN = 1 << 20  # eval scores 16 windows at once: 16 x 1M tokens of logits is already tens of GB


def int_in(low: int, high: int):
    """An argparse type for a whole number in [low, high] (eval --seq-len 0 was silently the default)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number in [{low}, {high}], got {text}")
        return v
    return parse


def int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def shape_list(text: str) -> list[tuple[int, int]]:
    """'2560x2560,6912x2560' -> [(2560, 2560), (6912, 2560)] (N x K)."""
    shapes = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        try:
            n, k = (int(d) for d in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected shapes like 2560x6912 (N x K), got {item!r}") from None
        shapes.append((n, k))
    return shapes


def name_list(choices: Sequence[str] | None):
    """An argparse type for 'a,b' where each item must be one of `choices` (None: any)."""
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in names if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)}")
        return names
    return parse


_BYTE_SUFFIX = {"K": 2**10, "M": 2**20, "G": 2**30}


def byte_size(text: str) -> int:
    """'1G' -> 2**30, '256M' -> 2**28, '4096' -> 4096 (binary suffixes K, M, G)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        n = int(float(t[:-1]) * _BYTE_SUFFIX[t[-1]]) if t and t[-1] in _BYTE_SUFFIX else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 1G, 256M or 4096, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a size > 0, got {text!r}")
    return n


def _check_writable(path: str) -> None:
    """ConfigError unless a file can be written at path."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ConfigError(f"--json: cannot write {path}", hint="give a file path in an existing, writable folder")


# ---------------------------------------------------------------------------------------
# bitttt info
# ---------------------------------------------------------------------------------------


def add_info_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "info", "show versions, CPU features, the ternary kernel path and CUDA status", """\
  bitttt info                   # human-readable
  bitttt info --json            # for scripts and bug reports
  BITTTT_ISA=scalar bitttt info # check which kernels a forced ISA selects
""")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--model", metavar="HF_FOLDER", help="also report a Hugging Face BitNet folder: parameters, "
                   "bytes read per decoded token")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from bitttt import info

    report = info.collect()
    if args.model:
        report["model"] = info.model_report(args.model)
    print(json.dumps(report, indent=2) if args.json else info.format_text(report))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# bitttt bench
# ---------------------------------------------------------------------------------------


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "bench", "benchmark bitttt's kernels", """\
  bitttt bench ternary --quick
  bitttt bench ttt --quick
  bitttt bench peak --quick
  bitttt bench train --quick
  bitttt bench ternary --help

Every bench validates its contenders before timing, interleaves them over >= 5 rounds and
reports medians with min-max; --json writes one record shape (bitttt/bench/harness.py).
""")
    benches = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    add_bench_ternary_parser(benches)
    add_bench_ttt_parser(benches)
    add_bench_bitnet_parser(benches)
    add_bench_peak_parser(benches)
    add_bench_train_parser(benches)
    add_bench_serve_parser(benches)


def _run_bench_module(args: argparse.Namespace) -> int:
    """`bitttt bench NAME` for the benches whose flags and logic all live in bitttt/bench/NAME.py:
    its run(args) returns an exit code, or None for success."""
    import importlib

    if getattr(args, "json", None):
        _check_writable(args.json)
    code = importlib.import_module(f"bitttt.bench.{args.bench}").run(args)
    return code if isinstance(code, int) else EXIT_OK


def add_bench_ternary_parser(sub: argparse._SubParsersAction) -> None:
    from bitttt.bench.shapes import TERNARY_SHAPES, TERNARY_TOKENS

    p = _subparser(sub, "ternary", "ternary_linear (packed, float32 in/out) vs F.linear fp32/bf16 and torch's int8 "
                   "GEMMs", """\
  bitttt bench ternary --quick                         # one shape, seconds
  bitttt bench ternary                                 # every default row, a few minutes
  bitttt bench ternary --shapes 4096x14336 --tokens 1 --regimes cold --json decode.json
  bitttt bench ternary --isa scalar,avx2 --baselines fp32   # kernel sets side by side
  bitttt bench ternary --device cuda --quick           # on the GPU: bf16 in/out vs F.linear bf16/fp16/fp32
""")
    shapes = ",".join(f"{n}x{k}" for n, k in TERNARY_SHAPES)
    p.add_argument("--shapes", type=shape_list, metavar="NxK,...", help=f"weight shapes NxK (default {shapes})")
    tokens = ",".join(map(str, TERNARY_TOKENS))
    p.add_argument("--tokens", type=int_list, metavar="M,...", help=f"tokens M per call (default {tokens})")
    p.add_argument("--threads", type=int_list, metavar="T,...", help="torch threads (default 1,2)")
    p.add_argument("--regimes", type=name_list(("hot", "cold")), metavar="hot,cold",
                   help="hot, cold or both (default hot,cold)")
    p.add_argument("--isa", type=name_list(None), metavar="ISA,...",
                   help="ternary kernel set(s) to time, e.g. scalar,avx2 (default: the active one; "
                        "bitttt info lists those available)")
    p.add_argument("--baselines", type=name_list(("fp32", "bf16", "fp16", "int8pack", "int8dyn")),
                   metavar="fp32,bf16,...",
                   help="contenders beside bitttt: F.linear fp32/bf16(/fp16 on cuda), int8pack "
                        "(aten._weight_int8pack_mm), int8dyn (quantize_dynamic Linear) "
                        "(default fp32,bf16,int8pack,int8dyn; cuda: bf16,fp16,fp32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default) or cuda: CUDA-event timing, own default shapes "
                        "(BitNet 2B: 2560x2560,6912x2560,2560x6912,13824x2560) and tokens (1,8,128,512,2048)")
    p.add_argument("--reps", type=int, metavar="N",
                   help="interleaved rounds per row (default: adaptive, >= --rounds, about 1 s per row)")
    p.add_argument("--rounds", type=int, metavar="N", help="at least this many interleaved rounds per row (default 5)")
    p.add_argument("--shared", action="store_true", help="record that other work shared the machine meanwhile")
    p.add_argument("--quick", action="store_true",
                   help="one shape, 1 thread, short rows: seconds (other flags given still apply)")
    p.add_argument("--no-peaks", action="store_true",
                   help="skip measuring the machine's peaks (bitttt bench peak) and the %% of peak column")
    p.add_argument("--json", metavar="PATH", help="also write the result record (bitttt/bench/harness.py) as JSON")
    p.set_defaults(func=_run_bench_ternary)


def _run_bench_ternary(args: argparse.Namespace) -> int:
    import dataclasses

    from bitttt.bench import ternary

    config = ternary.TernaryBenchConfig.for_device(args.device, quick=args.quick)
    overrides = {"shapes": args.shapes, "tokens": args.tokens, "threads": args.threads,
                 "regimes": args.regimes, "isas": args.isa, "baselines": args.baselines, "reps": args.reps,
                 "rounds": args.rounds, "peaks": False if args.no_peaks else None,
                 "shared_machine": True if args.shared else None}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.json:
        _check_writable(args.json)  # before minutes of timing, not after
    if config.device == "cuda":
        from bitttt.bench import ternary_cuda

        report = ternary_cuda.run(config, sys.stdout)
    else:
        report = ternary.run(config)
    if args.json:
        ternary.write_json(report, args.json)
        print(f"wrote {args.json}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# bitttt train
# ---------------------------------------------------------------------------------------


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from bitttt import config

    d = config.defaults("tiny")
    p = _subparser(sub, "train", "train a model; events on stdout and in RUN_DIR/events.jsonl (design §6). "
                   "The defaults shown are the tiny preset's; --preset small|base changes model and schedule; "
                   "every model key (e.g. conv_kernel, use_gate, intermediate_size) can be set with --config",
                   """\
  bitttt train                                   # tiny model on CPython's docs, ~15 min on 2 cores
  bitttt train --data notes/ --steps 5000 --run-dir runs/notes
  bitttt train --preset small --mixer attention --no-ternary --device cuda
  bitttt train --resume runs/notes                # continue where it stopped, bit for bit
  bitttt train --resume runs/notes --steps 10000  # extend to 10000 steps in all (a new decay)
  bitttt train --config my.json --print-config   # the resolved settings, then exit
  touch runs/notes/STOP                          # stop cleanly: checkpoint, exit 0
""")
    def opt(flag: str, help: str, default_key: str | None = None, **kw) -> None:
        key = default_key or flag.lstrip("-").replace("-", "_")
        shown = d.get(key)
        if "(default" not in help:
            help = f"{help} (default: {shown})"
        if kw.get("type") in (int, float):  # the config file's rule: --steps 2.7 and --lr nan are refused
            kw["type"] = setting_type(key)
        g.add_argument(flag, default=None, help=help, **kw)

    g = p.add_argument_group("run")
    opt("--preset", "model and schedule preset", choices=list(config.PRESETS))
    g.add_argument("--config", metavar="FILE", help="JSON settings (any key below, or a run's config.json); "
                                                    "flags given override it")
    opt("--data", "training text: files, folders or globs of .txt/.md/.jsonl[.gz] (default: CPython's pydoc "
        "topics)", nargs="+", metavar="PATH")
    opt("--run-dir", "output folder (default: runs/<timestamp>)", metavar="DIR")
    g.add_argument("--resume", metavar="PATH", help="continue a run directory or checkpoint exactly (its own settings, "
                   "data and schedule); with a larger --steps, extend it: the added steps decay by cosine from the "
                   "learning rate it had to --min-lr, never back up towards --lr")
    opt("--device", "where to train", choices=["auto", "cpu", "cuda"])
    opt("--seed", "seed for weights and batches", type=int)
    opt("--threads", "CPU threads; 0: one per core", type=int)
    opt("--compile", "torch.compile the model's forward and backward at start-up (tens of seconds on a CPU); "
        "eager, with a warning, where that fails", action=argparse.BooleanOptionalAction)
    opt("--log-format", "stdout format; events.jsonl is always written", choices=["text", "jsonl"])
    g.add_argument("--nproc", type=int, metavar="N", help="data parallel on this machine: start N processes "
                   "(one per GPU, or CPU cores shared out) under torchrun; --batch-size is per process. For "
                   "several machines run torchrun yourself (README) (default: 1)")
    opt("--dist-timeout", "under torchrun: seconds a process waits for the others before the job fails", type=float)
    g.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    g = p.add_argument_group("model")
    opt("--mixer", "sequence mixer", choices=list(config.MIXERS))
    opt("--ternary", "BitLinear (ternary) projections; --no-ternary: the full-precision twin",
        action=argparse.BooleanOptionalAction)
    opt("--n-layer", "blocks", type=int)
    opt("--n-embd", "model width", type=int)
    opt("--n-head", "heads", type=int)
    opt("--mini-batch", "TTT mini-batch size b", type=int)
    opt("--tie-embeddings", "share embedding and LM head", action=argparse.BooleanOptionalAction)
    opt("--tokenizer", "byte, or a BPE trained on --data", choices=["byte", "bpe"])
    opt("--vocab-size", "BPE vocabulary", default_key="bpe_vocab_size", dest="bpe_vocab_size", type=int)
    g = p.add_argument_group("schedule")
    opt("--steps", "optimizer steps in all (with --resume: the new total, more than the run's step)", type=int)
    opt("--batch-size", "sequences per micro-batch", type=int)
    opt("--seq-len", "tokens per sequence", type=int)
    opt("--grad-accum", "micro-batches per step", type=int)
    opt("--lr", "peak learning rate", type=float)
    opt("--min-lr", "final learning rate of the cosine decay", type=float)
    opt("--warmup", "linear warmup steps", type=int)
    opt("--weight-decay", "AdamW weight decay", type=float)
    opt("--grad-clip", "gradient norm clip", type=float)
    opt("--eval-every", "steps between validation losses (0: only at the end)", type=int)
    opt("--eval-tokens", "validation tokens per evaluation", type=int)
    opt("--save-every", "steps between checkpoints (0: only the final one)", type=int)
    opt("--keep-last", "step checkpoints kept besides the best", type=int)
    opt("--sample-every", "steps between generated samples (0: none)", type=int)
    opt("--sample-tokens", "tokens per sample", type=int)
    opt("--sample-prompt", "prompt of the samples")
    opt("--log-every", "steps between step events", type=int)
    opt("--val-fraction", "share of the text held out for validation", type=float)
    opt("--stop-after", "stop (checkpoint, exit 0) after this many steps of this invocation; 0: never", type=int)
    p.set_defaults(func=_run_train)


def setting_type(key: str):
    """An argparse type for a `bitttt train` setting: parsed and checked by config.RULES."""
    from bitttt import config

    rule = config.RULES[key]

    def parse(text: str):
        try:
            return rule.check(rule.kind(text) if rule.kind in (int, float) else text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule.describe()}, got {text!r}") from None
    return parse


def _run_train(args: argparse.Namespace) -> int:
    if args.nproc is not None and args.nproc != 1 and not args.print_config:
        from bitttt import distributed

        return distributed.launch(args.nproc, _without_nproc(args.argv[1:]))
    from bitttt.stop import StopFlag

    stop = StopFlag()
    stop.install()  # before torch loads: from here on a Ctrl-C, SIGTERM or STOP file is a clean stop
    try:
        from bitttt import train

        flags = {k: v for k, v in vars(args).items() if k not in ("func", "command", "argv", "nproc")}
        return train.run(flags, list(sys.argv), stop)
    finally:
        stop.restore()


def _without_nproc(argv: list[str]) -> list[str]:
    """The train arguments for each process of a --nproc job: all but --nproc N."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


# ---------------------------------------------------------------------------------------
# bitttt generate / chat / eval / export
# ---------------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH", help="a run directory (its final or latest checkpoint), "
                   "a checkpoint folder or an export")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="(default: cpu)")
    p.add_argument("--no-pack", action="store_true", help="run the fake-quant float path instead of the packed "
                   "ternary kernel (checkpoints only; for comparisons)")


def _add_sampling_args(p: argparse.ArgumentParser, chat: bool = False) -> None:
    p.add_argument("--lm-head", choices=["float", "int8"], default="float",
                   help="int8: the LM head as int8 with per-row scales, a quarter of float32's bytes per "
                        "decoded token (default: float)")
    # chat's defaults sample, with a mild repetition penalty and a ban on repeating any 16 tokens
    # already in the turn: without them a small model at temperature 0 loops ("'two': 'two': ...");
    # 16 is long enough that byte-level text rarely repeats that much on purpose. generate's are plain.
    d = dict(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.1, no_repeat_ngram=16) if chat else \
        dict(temperature=0.8, top_k=0, top_p=1.0, repetition_penalty=1.0, no_repeat_ngram=0)
    p.add_argument("--max-new-tokens", type=int, default=200, help="(default: 200)")
    p.add_argument("--temperature", type=float, default=d["temperature"], help=f"0 = greedy (default: {d['temperature']})")
    p.add_argument("--top-k", type=int, default=d["top_k"], help=f"0 = off (default: {d['top_k']})")
    p.add_argument("--top-p", type=float, default=d["top_p"], help=f"nucleus sampling; 1 = off (default: {d['top_p']})")
    p.add_argument("--repetition-penalty", type=float, default=d["repetition_penalty"],
                   help=f"1 = off (default: {d['repetition_penalty']})")
    p.add_argument("--no-repeat-ngram", type=int, default=d["no_repeat_ngram"], metavar="N",
                   help=f"never repeat a sequence of N tokens already in the text; 0 = off (default: {d['no_repeat_ngram']})")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)")


def _sampling(args: argparse.Namespace):
    from bitttt.generate import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                          no_repeat_ngram=args.no_repeat_ngram, seed=args.seed, stop=args.stop)


def _load(args: argparse.Namespace):
    from bitttt import checkpoint
    from bitttt.devices import pick_device

    return checkpoint.load_model(args.model, pick_device(args.device), pack=False if args.no_pack else True,
                                 lm_head=getattr(args, "lm_head", "float"))


def add_generate_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "generate", "continue a prompt, streaming the tokens", """\
  bitttt generate --model runs/my-run --prompt "The "
  bitttt generate --model export/ --prompt "def f(" --temperature 0 --max-new-tokens 50
""")
    _add_model_args(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    _add_sampling_args(p)
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from bitttt import generate

    params = _sampling(args)
    model, tokenizer, _ = _load(args)
    stats = generate.run_generate(model, tokenizer, args.prompt, params)
    print(f"[{stats['n_tokens']} tokens, {stats['n_tokens'] / max(stats['seconds'], 1e-9):.1f} tokens/s]",
          file=sys.stderr)
    return EXIT_OK


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "chat", "chat with a model; its TTT state carries over between turns", """\
  bitttt chat --model runs/my-run
  bitttt chat --model runs/my-run --protocol jsonl   # the launcher's interface (design §6)
""")
    _add_model_args(p)
    p.add_argument("--protocol", default="text", choices=["text", "jsonl"], help="(default: text)")
    p.add_argument("--state-dir", metavar="DIR", help="jsonl: save_state/load_state paths must lie inside DIR "
                   "(relative ones are taken in it); default: any path the client names")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "plain"],
                   help="chat: <|user|>/<|assistant|> tokens; plain: 'User:'/'Assistant:' text for models "
                        "trained on plain text; auto: chat if the training data had chat messages")
    _add_sampling_args(p, chat=True)
    p.set_defaults(func=_run_chat)


def _chat_format(args: argparse.Namespace, info: dict) -> bool:
    """--format: chat if asked, or (auto) if the model's training data had chat messages."""
    return args.format == "chat" or (args.format == "auto" and info["sections"].get("data", {}).get("chat", False))


def _run_chat(args: argparse.Namespace) -> int:
    from bitttt import chat_server, generate

    params = _sampling(args)
    model, tokenizer, info = _load(args)
    chat = _chat_format(args, info)
    session = generate.ChatSession(model, tokenizer, chat, params)
    if args.protocol == "jsonl":
        return chat_server.chat_jsonl(session, sys.stdin, sys.stdout, args.state_dir, info["path"])
    return generate.chat_text(session, sys.stdin, sys.stdout)


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "serve", "serve a model over OpenAI's HTTP API (continuous batching, TTT state cache)", """\
  bitttt serve --model runs/my-run                       # http://127.0.0.1:8000/v1
  bitttt serve --model export/ --port 8080 --max-batch 16 --threads 2
  BITTTT_API_KEY=secret bitttt serve --model runs/my-run --host 0.0.0.0   # every interface: set a key
  (needs the serve extra: pip install 'bitttt[serve]'; docs/serve.md)
""")
    _add_model_args(p)
    p.add_argument("--lm-head", choices=["float", "int8"], default="float", help="(default: float)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    p.add_argument("--api-key", help="clients must send 'Authorization: Bearer KEY' (default: $BITTTT_API_KEY; "
                   "none if unset)")
    p.add_argument("--model-name", help="the model id clients use (default: the model folder's name)")
    p.add_argument("--format", default="auto", choices=["auto", "chat", "plain"], help="as bitttt chat's")
    p.add_argument("--max-batch", type=int, default=8, help="requests decoded together (default: 8)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot; more get 429 (default: 64)")
    p.add_argument("--state-cache-mb", type=float, default=256.0,
                   help="memory for conversation states that later requests resume from; 0 = off (default: 256)")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="longer prompts get 413 (default: 8192)")
    p.add_argument("--max-body", type=byte_size, default=4 * 2**20, metavar="SIZE",
                   help="bigger request bodies get 413 (default: 4M)")
    p.add_argument("--default-max-tokens", type=int, default=512,
                   help="tokens generated when a request names no max_tokens (default: 512)")
    p.add_argument("--prefill-chunk", type=int, default=128,
                   help="prompt tokens fed per step between decode steps, so a long prompt does not stall "
                        "the other streams (default: 128)")
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from bitttt.serve import server
    from bitttt.serve.engine import EngineConfig

    if (missing := server.missing_extra()) is not None:  # before the model loads
        raise ConfigError(f"serve: {missing} not installed", hint="pip install 'bitttt[serve]'")
    if not 0 <= args.port < 65536:
        raise ConfigError(f"serve: --port must be in 0..65535, got {args.port}")
    engine_config = EngineConfig(max_batch=args.max_batch, max_queue=args.max_queue,
                                 state_cache_mb=args.state_cache_mb, max_prompt_tokens=args.max_prompt_tokens,
                                 prefill_chunk=args.prefill_chunk)
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    model, tokenizer, info = _load(args)
    chat = _chat_format(args, info)
    options = server.ServeOptions(host=args.host, port=args.port, api_key=args.api_key, model_name=args.model_name,
                                  chat_format=chat, max_body_bytes=args.max_body,
                                  default_max_tokens=args.default_max_tokens)
    return server.serve(model, tokenizer, info["path"], engine_config, options)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "eval", "loss, bits per byte and perplexity of a model on text", """\
  bitttt eval --model runs/my-run                 # its held-out set: the measure of its eval events
  bitttt eval --model export/ --data test.txt --json
""")
    _add_model_args(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="text to evaluate, all of it (default: the held-out "
                                                               "split of the model's training data)")
    p.add_argument("--seq-len", type=int_in(1, MAX_EVAL_SEQ_LEN), metavar="N",
                   help="window length (default: the training one)")
    p.add_argument("--max-tokens", type=int_in(1, 2**63 - 1), metavar="N",
                   help="tokens evaluated at most (default: the run's --eval-tokens on its held-out set, as its "
                        "eval events; 65536 with --data)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from bitttt import evaluate
    from bitttt.devices import pick_device

    r = evaluate.evaluate(args.model, args.data, pick_device(args.device), pack=not args.no_pack,
                          seq_len=args.seq_len, max_tokens=args.max_tokens)
    what = "held-out tokens" if r["held_out"] else "tokens"
    print(json.dumps(r) if args.json else f"{r['model']}: loss {r['loss']:.4f} | {r['bits_per_byte']:.3f} bits/byte | "
          f"perplexity {r['perplexity']:.2f} | {r['tokens']:,} {what}")
    return EXIT_OK


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "export", "write a packed inference model (BT2 ternary weights, design §5)", """\
  bitttt export runs/my-run --out models/my-model
  bitttt export runs/my-run --out models/my-model --force   # replace that earlier export
""")
    p.add_argument("path", metavar="PATH", help="a run directory, checkpoint or export")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write: new, empty, or an earlier "
                   "export (with --force); never a run or its checkpoints")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from bitttt import export

    r = export.export(args.path, args.out, force=args.force)
    print(f"exported {r['source']} -> {r['out']}: {r['bytes'] / 1e6:.2f} MB "
          f"(float16: {r['float16_bytes_estimate'] / 1e6:.2f} MB)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def add_bench_ttt_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "ttt", "ttt_linear C++ op vs the pure-torch reference: prefill, decode, forward+backward", """\
  bitttt bench ttt --quick                  # B=1, T=512 and 2048
  bitttt bench ttt --batch 1 --tokens 2048 --json ttt.json
  bitttt bench ttt --device cuda --quick    # the CUDA kernels vs the reference on the GPU
""")
    from bitttt.bench.ttt_flags import add_arguments  # torch-free: --help stays fast

    add_arguments(p)
    p.set_defaults(func=_run_bench_module)


# ---------------------------------------------------------------------------------------
# bitttt bench train (issue 26; its logic lives in bitttt/bench/train.py)
# ---------------------------------------------------------------------------------------


def add_bench_train_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "train", "tokens/s of bitttt train's step vs a plain fp32 nanoGPT-style transformer", """\
  bitttt bench train --quick                          # tiny shapes, 1 thread, seconds
  bitttt bench train --threads 2 1 --json train.json  # issue 26's comparison
  bitttt bench train --contenders ttt_mlp-ternary attention-ternary --profile 15
""")
    from bitttt.bench.train_flags import add_arguments  # torch-free: --help stays fast

    add_arguments(p)
    p.set_defaults(func=_run_bench_module)


# ---------------------------------------------------------------------------------------
# bitttt bench bitnet (issue 11; its logic lives in bitttt/bench/bitnet.py)
# ---------------------------------------------------------------------------------------


def add_bench_bitnet_parser(sub: argparse._SubParsersAction) -> None:
    from bitttt.bench import bitnet  # no torch at import: --help stays fast

    p = _subparser(sub, "bitnet", "BitNet b1.58 2B4T-shaped decode/prefill: bitttt vs llama.cpp TQ2_0 vs transformers", """\
  bitttt bench bitnet --layers 2 --new-tokens 8 --prefill 32      # a quick check, under a minute
  bitttt bench bitnet --lock /work/bench.lock --json bitnet.json  # 30 layers, 1 and 2 threads
  bitttt bench bitnet --engines bitttt transformers --threads 2 --prefill 128 --hf-tokens 2
""")
    bitnet.add_arguments(p)
    p.set_defaults(func=_run_bench_module)


# ---------------------------------------------------------------------------------------
# bitttt bench peak (issue 15; its logic lives in bitttt/bench/peak.py)
# ---------------------------------------------------------------------------------------


def add_bench_peak_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "peak", "this machine's peaks, measured: int8 dot products (vpdpbusd, vpmaddubsw), "
                   "FP32 FMA (zmm, ymm) and streaming read bandwidth, per thread count", """\
  bitttt bench peak                          # 1 and 2 threads, about 10 s
  bitttt bench peak --quick --json peaks.json
  bitttt bench peak --threads 1 2 4 --read-bytes 4G
""")
    p.add_argument("--threads", type=int_list, nargs="+", metavar="T",
                   help="thread counts, e.g. 1 2 or 1,2 (default 1 2)")
    p.add_argument("--read-bytes", type=byte_size, metavar="SIZE",
                   help="buffer of the read bandwidth, far above L3 (default 1G; --quick 256M)")
    p.add_argument("--quick", action="store_true", help="shorter runs and a 256M read: a few seconds")
    p.add_argument("--rounds", type=int, default=5, help="interleaved passes over every kernel (default 5)")
    p.add_argument("--shared", action="store_true", help="record that other work shared the machine meanwhile")
    p.add_argument("--json", metavar="PATH", help="also write the result record (bitttt/bench/harness.py) as JSON")
    p.set_defaults(func=_run_bench_peak)


def _run_bench_peak(args: argparse.Namespace) -> int:
    from bitttt.bench import peak

    threads = [t for group in args.threads for t in group] if args.threads else [1, 2]
    if args.json:
        _check_writable(args.json)
    peak.run(threads, args.read_bytes, args.quick, args.json, rounds=args.rounds, shared=args.shared)
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# bitttt bench serve (issue 29; its logic lives in bitttt/bench/serve.py)
# ---------------------------------------------------------------------------------------


def add_bench_serve_parser(sub: argparse._SubParsersAction) -> None:
    from bitttt.bench import serve  # no torch at import: --help stays fast

    p = _subparser(sub, "serve", "bitttt serve's engine: aggregate decode tokens/s at 1-16 streams, and the "
                   "time to first token of a TTT conversation's 10th turn with and without the state cache", """\
  bitttt bench serve --quick                         # tiny model, under a minute
  bitttt bench serve --models base --json benchmarks/results/<machine>/serve_base.json
  bitttt bench serve --models 2b --layers 30 --streams 1 4 8 --rounds 2
""")
    serve.add_arguments(p)
    p.set_defaults(func=_run_bench_module)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bitttt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BitNet b1.58 ternary layers and Test-Time-Training layers for small language models.",
        epilog="examples:\n  bitttt train\n  bitttt chat --model runs/<name>\n  bitttt info\n  bitttt <command> --help")
    parser.add_argument("--version", action="version", version=f"bitttt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(sub)
    add_generate_parser(sub)
    add_chat_parser(sub)
    add_serve_parser(sub)
    add_eval_parser(sub)
    add_export_parser(sub)
    add_info_parser(sub)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `bitttt ARGS`; returns the exit code (the console script passes it to sys.exit)."""
    if "torch" not in sys.modules:
        # OpenMP threads that spin while waiting cost 3-10x on a busy machine (a shared CPU, a
        # launcher's GUI); sleeping costs little when it is idle. Read when torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # as given: `train --nproc` passes it on
    except SystemExit as e:  # --help, --version (0), or a usage error (2)
        return EXIT_OK if e.code is None else e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        return args.func(args)
    except BitttError as e:
        safe_print(error_line(e, e.hint))
        return e.exit_code
    except KeyboardInterrupt:
        safe_print(f"bitttt: {args.command}: interrupted")
        return 130
    except Exception as e:
        if is_out_of_memory(e):
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            safe_print(error_line(f"{args.command}: out of memory: {first}", "use smaller sizes"))
            return EXIT_OOM
        safe_print(traceback.format_exc().rstrip())
        safe_print(f"bitttt: error: {args.command}: unexpected {type(e).__name__}: {e}")
        return EXIT_ERROR
