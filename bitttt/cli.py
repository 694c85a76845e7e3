"""The `bitttt` command line (docs/design.md §6b): argparse subcommands over the feature modules.

Each subcommand is one `add_<cmd>_parser()` with an `examples:` epilog and a `_run_<cmd>()`
that imports its feature module only when it runs. `main` alone turns bitttt's exceptions
into the exit codes of design §6: 2 bad arguments or config, 3 data error, 4 out of memory,
1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from bitttt import __version__
from bitttt.errors import BitttError, ConfigError, DataError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_DATA, EXIT_OOM = 0, 1, 2, 3, 4


def _subparser(sub: argparse._SubParsersAction, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)  # keeps the examples' lines


# ---------------------------------------------------------------------------------------
# Argument types: a bad value exits 2 with argparse's usage line
# ---------------------------------------------------------------------------------------


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
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from bitttt import info

    report = info.collect()
    print(json.dumps(report, indent=2) if args.json else info.format_text(report))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# bitttt bench
# ---------------------------------------------------------------------------------------


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "bench", "benchmark bitttt's kernels", """\
  bitttt bench ternary --quick
  bitttt bench ttt --quick
  bitttt bench ternary --help
""")
    benches = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    add_bench_ternary_parser(benches)
    add_bench_ttt_parser(benches)


def add_bench_ternary_parser(sub: argparse._SubParsersAction) -> None:
    from bitttt.bench.shapes import TERNARY_SHAPES, TERNARY_TOKENS

    p = _subparser(sub, "ternary", "ternary_linear (packed, float32 in/out) vs F.linear in float32 and bfloat16", """\
  bitttt bench ternary --quick                         # one shape, < 30 s
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
    p.add_argument("--baselines", type=name_list(("fp32", "bf16", "fp16")), metavar="fp32,bf16",
                   help="F.linear dtypes to compare with (default fp32,bf16; cuda: bf16,fp16,fp32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default) or cuda: CUDA-event timing, own default shapes "
                        "(BitNet 2B: 2560x2560,6912x2560,2560x6912,13824x2560) and tokens (1,8,128,512,2048)")
    p.add_argument("--reps", type=int, metavar="N", help="repetitions per row (default: adaptive, about 1 s per row)")
    p.add_argument("--quick", action="store_true",
                   help="one shape, 1 thread, short rows: under 30 s (other flags given still apply)")
    p.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    p.set_defaults(func=_run_bench_ternary)


def _run_bench_ternary(args: argparse.Namespace) -> int:
    import dataclasses

    from bitttt.bench import ternary

    config = ternary.TernaryBenchConfig.for_device(args.device, quick=args.quick)
    overrides = {"shapes": args.shapes, "tokens": args.tokens, "threads": args.threads,
                 "regimes": args.regimes, "isas": args.isa, "baselines": args.baselines, "reps": args.reps}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.json:
        _check_writable(args.json)  # before minutes of timing, not after
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
  bitttt train --resume runs/notes --steps 10000  # continue (a longer schedule)
  bitttt train --config my.json --print-config   # the resolved settings, then exit
  touch runs/notes/STOP                          # stop cleanly: checkpoint, exit 0
""")
    def opt(flag: str, help: str, default_key: str | None = None, **kw) -> None:
        key = default_key or flag.lstrip("-").replace("-", "_")
        shown = d.get(key)
        if "(default" not in help:
            help = f"{help} (default: {shown})"
        g.add_argument(flag, default=None, help=help, **kw)

    g = p.add_argument_group("run")
    opt("--preset", "model and schedule preset", choices=list(config.PRESETS))
    g.add_argument("--config", metavar="FILE", help="JSON settings (any key below, or a run's config.json); "
                                                    "flags given override it")
    opt("--data", "training text: files, folders or globs of .txt/.md/.jsonl[.gz] (default: CPython's pydoc "
        "topics)", nargs="+", metavar="PATH")
    opt("--run-dir", "output folder (default: runs/<timestamp>)", metavar="DIR")
    g.add_argument("--resume", metavar="PATH", help="continue a run directory or checkpoint exactly")
    opt("--device", "where to train", choices=["auto", "cpu", "cuda"])
    opt("--seed", "seed for weights and batches", type=int)
    opt("--threads", "CPU threads; 0: one per core", type=int)
    opt("--compile", "torch.compile the model", action=argparse.BooleanOptionalAction)
    opt("--log-format", "stdout format; events.jsonl is always written", choices=["text", "jsonl"])
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
    opt("--steps", "optimizer steps", type=int)
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


def _run_train(args: argparse.Namespace) -> int:
    from bitttt import train

    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    return train.run(flags, list(sys.argv))


# ---------------------------------------------------------------------------------------
# bitttt generate / chat / eval / export
# ---------------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH", help="a run directory (its final or latest checkpoint), "
                   "a checkpoint folder or an export")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"], help="(default: cpu)")
    p.add_argument("--no-pack", action="store_true", help="run the fake-quant float path instead of the packed "
                   "ternary kernel (checkpoints only; for comparisons)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=200, help="(default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="0 = off (default: 0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling; 1 = off (default: 1.0)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (default: 1.0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)")


def _sampling(args: argparse.Namespace):
    from bitttt.generate import SamplingParams

    return SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                          stop=args.stop)


def _load(args: argparse.Namespace):
    from bitttt import checkpoint
    from bitttt.train import pick_device

    return checkpoint.load_model(args.model, pick_device(args.device), pack=False if args.no_pack else True)


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
    p.add_argument("--format", default="auto", choices=["auto", "chat", "plain"],
                   help="chat: <|user|>/<|assistant|> tokens; plain: 'User:'/'Assistant:' text for models "
                        "trained on plain text; auto: chat if the training data had chat messages")
    _add_sampling_args(p)
    p.set_defaults(func=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from bitttt import generate

    params = _sampling(args)
    model, tokenizer, info = _load(args)
    chat = args.format == "chat" or (args.format == "auto" and info["sections"].get("data", {}).get("chat", False))
    session = generate.ChatSession(model, tokenizer, chat, params)
    if args.protocol == "jsonl":
        return generate.chat_jsonl(session, sys.stdin, sys.stdout)
    return generate.chat_text(session, sys.stdin, sys.stdout)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "eval", "loss, bits per byte and perplexity of a model on text", """\
  bitttt eval --model runs/my-run                 # the held-out split of the default corpus
  bitttt eval --model export/ --data test.txt --json
""")
    _add_model_args(p)
    p.add_argument("--data", nargs="+", metavar="PATH", help="text to evaluate (default: the default corpus's "
                                                               "held-out split)")
    p.add_argument("--seq-len", type=int, help="window length (default: the training one)")
    p.add_argument("--max-tokens", type=int, default=65536, help="tokens evaluated at most (default: 65536)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from bitttt import export
    from bitttt.train import pick_device

    r = export.evaluate(args.model, args.data, pick_device(args.device), pack=not args.no_pack,
                        seq_len=args.seq_len, max_tokens=args.max_tokens)
    print(json.dumps(r) if args.json else f"{r['model']}: loss {r['loss']:.4f} | {r['bits_per_byte']:.3f} bits/byte | "
          f"perplexity {r['perplexity']:.2f} | {r['tokens']} tokens")
    return EXIT_OK


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "export", "write a packed inference model (BT2 ternary weights, design §5)", """\
  bitttt export runs/my-run --out models/my-model
""")
    p.add_argument("path", metavar="PATH", help="a run directory, checkpoint or export")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from bitttt import export

    r = export.export(args.path, args.out)
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
    add_bench_ttt_arguments(p)
    p.set_defaults(func=_run_bench_ttt)


def add_bench_ttt_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The TTT benchmark's flags (also used by benchmarks/ttt.py); kept here so --help needs no torch."""
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes B (default 1 4)")
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192], help="sequence lengths T")
    p.add_argument("--heads", type=int, default=12, help="heads H (default 12)")
    p.add_argument("--head-dim", type=int, default=64, help="head size D (default 64)")
    p.add_argument("--mini-batch", type=int, default=16, help="TTT mini-batch b (default 16)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls of the op per measurement (default 3)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd reference")
    p.add_argument("--ref-grad-max-tokens", type=int, default=8192,
                   help="run the reference's forward+backward only up to B*T tokens (it is slow; default 8192)")
    p.add_argument("--quick", action="store_true", help="B=1, T=512 and 2048 only")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the op and the reference run (default cpu; cuda: CUDA-event timing)")
    return p


def _run_bench_ttt(args: argparse.Namespace) -> int:
    from bitttt.bench import ttt

    ttt.run(args)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitttt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BitNet b1.58 ternary layers and Test-Time-Training layers for small language models.",
        epilog="examples:\n  bitttt train\n  bitttt chat --model runs/<name>\n  bitttt info\n  bitttt <command> --help")
    parser.add_argument("--version", action="version", version=f"bitttt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(sub)
    add_generate_parser(sub)
    add_chat_parser(sub)
    add_eval_parser(sub)
    add_export_parser(sub)
    add_info_parser(sub)
    add_bench_parser(sub)
    return parser


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch  # loaded already by `import bitttt`

    return (MemoryError, torch.OutOfMemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `bitttt ARGS`; returns the exit code (the console script passes it to sys.exit)."""
    if "torch" not in sys.modules:
        # OpenMP threads that spin while waiting cost 3-10x on a busy machine (a shared CPU, a
        # launcher's GUI); sleeping costs little when it is idle. Read when torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0), or a usage error (2)
        return EXIT_OK if e.code is None else e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        return args.func(args)
    except BitttError as e:
        print(f"bitttt: error: {e}" + (f" (hint: {e.hint})" if e.hint else ""), file=sys.stderr)
        if isinstance(e, ConfigError):
            return EXIT_CONFIG
        return EXIT_DATA if isinstance(e, DataError) else EXIT_ERROR
    except KeyboardInterrupt:
        print(f"bitttt: {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, _oom_types()):
            print(f"bitttt: error: {args.command}: out of memory: {e} (hint: use smaller sizes)", file=sys.stderr)
            return EXIT_OOM
        traceback.print_exc()
        print(f"bitttt: error: {args.command}: unexpected {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
