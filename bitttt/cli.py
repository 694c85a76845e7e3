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
    p.add_argument("--baselines", type=name_list(("fp32", "bf16")), metavar="fp32,bf16",
                   help="F.linear dtypes to compare with (default fp32,bf16)")
    p.add_argument("--reps", type=int, metavar="N", help="repetitions per row (default: adaptive, about 1 s per row)")
    p.add_argument("--quick", action="store_true",
                   help="one shape, 1 thread, short rows: under 30 s (other flags given still apply)")
    p.add_argument("--json", metavar="PATH", help="also write the results and machine info as JSON")
    p.set_defaults(func=_run_bench_ternary)


def _run_bench_ternary(args: argparse.Namespace) -> int:
    import dataclasses

    from bitttt.bench import ternary

    config = ternary.TernaryBenchConfig.quick() if args.quick else ternary.TernaryBenchConfig()
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
# main
# ---------------------------------------------------------------------------------------


def add_bench_ttt_parser(sub: argparse._SubParsersAction) -> None:
    p = _subparser(sub, "ttt", "ttt_linear C++ op vs the pure-torch reference: prefill, decode, forward+backward", """\
  bitttt bench ttt --quick                  # B=1, T=512 and 2048
  bitttt bench ttt --batch 1 --tokens 2048 --json ttt.json
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
    return p


def _run_bench_ttt(args: argparse.Namespace) -> int:
    from bitttt.bench import ttt

    ttt.run(args)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitttt", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="BitNet b1.58 ternary layers and Test-Time-Training layers for small language models.",
        epilog="examples:\n  bitttt info\n  bitttt bench ternary --quick\n  bitttt <command> --help")
    parser.add_argument("--version", action="version", version=f"bitttt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_info_parser(sub)
    add_bench_parser(sub)
    return parser


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch  # loaded already by `import bitttt`

    return (MemoryError, torch.OutOfMemoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `bitttt ARGS`; returns the exit code (the console script passes it to sys.exit)."""
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
