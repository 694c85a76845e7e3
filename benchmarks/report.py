"""Regenerates every README table between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` from the
result records committed under benchmarks/results/<machine>/ (bitttt/bench/harness.py's shape).

    python benchmarks/report.py            # rewrite README.md's tables in place
    python benchmarks/report.py --check    # exit 1, naming each table that differs (CI: tests/bench)

Each table starts with a line naming its machine, date, command and load, and the file it
comes from, so no number in the README stands without a record behind it. A marker whose NAME
has no renderer here, or a renderer whose file is missing, is an error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
MARKER = re.compile(r"(<!-- bench:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def load(rel: str) -> dict[str, Any]:
    with open(RESULTS / rel, encoding="utf-8") as f:
        return json.load(f)


def provenance(rec: dict[str, Any], rel: str) -> str:
    """One line: machine, date, command, load before/after, the record's file."""
    m = rec["machine"]
    isa = "AVX-512 VNNI" if "avx512vnni" in m["isa"] else ("AVX2" if "avx2" in m["isa"] else "no AVX2")
    shared = " (shared machine: other jobs ran)" if rec["settings"].get("shared_machine") else ""
    lb, la = (", ".join(f"{x:g}" for x in rec[k]) for k in ("load_before", "load_after"))
    commit = str(rec["versions"]["bitttt"])
    commit = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
    return (f"{m['cpu']}, {m['cores']} logical CPUs, {isa}; {rec['date'][:10]}; torch {rec['versions']['torch']}, "
            f"bitttt {commit}; `{rec['command']}`; load {lb} before, {la} after"
            f"{shared}; `benchmarks/results/{rel}`")


def _num(x: float | None, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    return f"{x:{fmt}}" if abs(x) < 1000 else f"{x:.0f}"


def _range(c: dict[str, Any]) -> str:
    return f"{_num(c['median'])} ({_num(c['min'])}-{_num(c['max'])})"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def by_case(rec: dict[str, Any]) -> dict[tuple[str, int], dict[str, dict[str, Any]]]:
    out: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for c in rec["cases"]:
        out.setdefault((c["case"], c["threads"]), {})[c["contender"]] = c
    return out


def render_ternary(rel: str) -> str:
    """Per row: each contender's median µs (min-max), bitttt's speedup over each, % of peak."""
    rec = load(rel)
    rows = by_case(rec)
    names = list(next(iter(rows.values())))
    head = rec["settings"].get("headline_baseline")
    out = []
    for (case, threads), cs in rows.items():
        b = cs["bitttt"]
        out.append([case, str(threads)] + [_range(cs[n]) for n in names]
                   + [f"{cs[n]['median'] / b['median']:.2f}x" for n in names if n != "bitttt"]
                   + [f"{b['pct_of_peak']:.0f}%" if b.get("pct_of_peak") is not None else "-"])
    header = (["case", "threads"] + [f"{n} us" for n in names] + [f"vs {n}" for n in names if n != "bitttt"]
              + ["bitttt % of peak"])
    note = (f"Headline baseline: {head} (this CPU {'has' if rec['machine'].get('native_bf16') else 'lacks'} "
            "native bf16). Medians of interleaved rounds, (min-max); 'vs X' = X's time / bitttt's. % of peak: "
            "cold M=1 rows of the read bandwidth, M>1 rows of the int8 peak of the kernel set.")
    for e in rec["machine"]["peaks"].get("exceeded", []):
        note += (f" A rate ({e['rate']:.3g}) exceeded the measured {e['key']} peak ({e['measured_peak']:.3g}) at "
                 f"{e['threads']} thread(s) even after re-measuring: the peak is reported as that rate (100%).")
    return f"{provenance(rec, rel)}\n\n{table(header, out)}\n\n{note}\n"


def render_ttt(rel: str) -> str:
    """Per case: op, eager reference and compiled reference, with the op's ratio to each."""
    rec = load(rel)
    out = []
    for (case, _), cs in by_case(rec).items():
        op = cs["op"]
        rate = op["unit"].endswith("/s")
        cells = []
        for ref in ("reference", "reference-compiled"):
            r = cs.get(ref)
            ratio = (op["median"] / r["median"] if rate else r["median"] / op["median"]) if r else None
            cells += [_range(r) if r else "-", f"{ratio:.1f}x" if ratio else "-"]
        pct = op.get("pct_of_fp32_peak")
        out.append([case, op["unit"], _range(op), *cells, f"{pct:.0f}%" if pct is not None else "-"])
    header = ["case", "unit", "op", "eager reference", "op vs eager", "compiled reference", "op vs compiled",
              "op % of fp32 peak"]
    s = rec["settings"]
    note = (f"H={s['heads']} D={s['head_dim']} b={s['mini_batch']}, {s['threads']} thread(s), kernels "
            f"{s['ttt_isa']}. 'op vs X' above 1: the op is faster.")
    return f"{provenance(rec, rel)}\n\n{table(header, out)}\n\n{note}\n"


def render_peak(rel: str) -> str:
    rec = load(rel)
    out = [[c["contender"], str(c["threads"]), c["unit"], _range(c)] for c in rec["cases"]]
    return (f"{provenance(rec, rel)}\n\n{table(['peak', 'threads', 'unit', 'median (min-max) of passes'], out)}\n\n"
            "Each pass is the best of several runs; the records' machine peaks are the best pass.\n")


def render_train(rel: str) -> str:
    rec = load(rel)
    s = rec["settings"]
    out = [[c["contender"], str(c["threads"]), _range(c), f"{c['vs_nanogpt']:.2f}x"] for c in rec["cases"]]
    return (f"{provenance(rec, rel)}\n\n{table(['contender', 'threads', 'tokens/s', 'vs nanogpt'], out)}\n\n"
            f"Preset {s['preset']}, batch {s['batch_size']} x {s['seq_len']}, {s['steps']} step(s) per window.\n")


def render_bitnet(rel: str) -> str:
    """Per case, threads and wait policy: each engine's median tok/s (min-max), bitttt-int8's
    ratio to every other engine, and decode's share of the roofline (bytes per token over the
    read bandwidth measured in the same run)."""
    rec = load(rel)
    rows: dict[tuple[str, int, str], dict[str, dict[str, Any]]] = {}
    for c in rec["cases"]:
        rows.setdefault((c["case"], c["threads"], c["wait_policy"]), {})[c["contender"]] = c
    names = list(dict.fromkeys(c["contender"] for c in rec["cases"]))
    ours = "bitttt-int8" if "bitttt-int8" in names else names[0]
    out = []
    for (case, threads, policy), cs in rows.items():
        roof = [f"{n} {cs[n]['pct_of_roofline']:.0f}%" for n in names
                if n in cs and cs[n].get("pct_of_roofline") is not None]
        out.append([case, str(threads), policy] + [_range(cs[n]) if n in cs else "-" for n in names]
                   + [f"{cs[ours]['median'] / cs[n]['median']:.2f}x" if ours in cs and n in cs else "-"
                      for n in names if n != ours]
                   + [", ".join(roof) or "-"])
    header = (["case", "threads", "wait policy"] + [f"{n} tok/s" for n in names]
              + [f"{ours} vs {n}" for n in names if n != ours] + ["% of roofline"])
    s = rec["settings"]
    return (f"{provenance(rec, rel)}\n\n{table(header, out)}\n\n{s['layers']} layers, prompt {s['prompt']} then "
            f"{s['new_tokens']} greedy tokens, {s['rounds']} interleaved rounds; each engine in its own process.\n")


def render_serve(rel: str) -> str:
    """Aggregate decode tokens/s per stream count and contender, and each one's ratio to its
    own one-stream rate."""
    rec = load(rel)
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for c in rec["cases"]:
        if "streams" in c:
            rows.setdefault(c["streams"], {})[c["contender"]] = c
    names = list(dict.fromkeys(c["contender"] for c in rec["cases"] if "streams" in c))
    one = {n: rows[min(rows)][n]["median"] for n in names if n in rows[min(rows)]}
    out = [[str(n)] + [f"{_range(cs[m])} ({cs[m]['median'] / one[m]:.2f}x)" if m in cs and m in one else "-"
                       for m in names] for n, cs in sorted(rows.items())]
    s = rec["settings"]
    return (f"{provenance(rec, rel)}\n\n{table(['streams'] + [f'{m} tok/s (vs 1 stream)' for m in names], out)}\n\n"
            f"{s['steps']} timed decode steps per case and round, {s['rounds']} rounds, LM head {s['lm_head']}.\n")


def render_generate(rel: str) -> str:
    """benchmarks/bench_generate.py: ms per decoded token of each contender (packed ternary, its
    per-op path, the float32 twin and its per-op path) and the float32 twin's time over each."""
    rec = load(rel)
    cases = rec["cases"]
    twin = next(c["median"] for c in cases if c["contender"] == "float32")
    out = [[c["case"], c["contender"], str(c["threads"]), _range(c), f"{twin / c['median']:.2f}x"] for c in cases]
    return (f"{provenance(rec, rel)}\n\n"
            f"{table(['case', 'contender', 'threads', 'ms/token', 'speed vs float32'], out)}\n")


def render_wait_policy_legacy(rel: str) -> str:
    """The wait-policy run of 2026-12-02, recorded before the harness (no date of its own, one run
    per engine and policy): decode tok/s per engine and policy, quiet and with 2 busy processes."""
    d = load(rel)
    cpu = d["quiet"]["machine"]["cpu"]
    rows = []
    for label in ("quiet", "busy"):
        rs = {(r["engine"], r["wait_policy"]): r for r in d[label]["rows"]}
        loads = [r["loadavg"] for r in rs.values()]
        rows.append([f"{'quiet' if label == 'quiet' else '2 busy processes'} (1-min load {min(loads):.1f}-{max(loads):.1f})"]
                    + [f"{rs[e, p]['decode_tokens_per_s']:.2f}" for e in ("bitttt-int8", "llama.cpp")
                       for p in ("passive", "spin")])
    head = (f"{cpu['model']}, {cpu['logical_cpus']} logical CPUs, AVX-512 VNNI; {d['date'][:10]} (commit date: the "
            f"run recorded none); one run per cell, not interleaved rounds; `{d['note'].split(' (quiet)')[0]}`; "
            f"`benchmarks/results/{rel}`")
    header = ["machine", "bitttt-int8 passive", "bitttt-int8 spin", "llama.cpp passive", "llama.cpp spin"]
    return f"{head}\n\n{table(header, rows)}\n"


# Table name (the README marker) -> (record file under benchmarks/results, renderer)
TABLES: dict[str, tuple[str, Callable[[str], str]]] = {
    "ternary": ("xeon-avx512-2c/ternary.json", render_ternary),
    "ttt": ("xeon-avx512-2c/ttt.json", render_ttt),
    "peak": ("xeon-avx512-2c/peak.json", render_peak),
    "wait-policy": ("xeon-avx512-2c/bitnet_2b_wait_policy_cpu.json", render_wait_policy_legacy),
    "bitnet": ("xeon-avx512-2c/bitnet_2b_vs_llamacpp_q8.json", render_bitnet),
    "bitnet-bf16": ("xeon-avx512-2c/bitnet_2b_vs_llamacpp_bf16.json", render_bitnet),
    "bitnet-bf16-2t": ("xeon-avx512-2c/bitnet_2b_vs_llamacpp_bf16_2t.json", render_bitnet),
    "bitnet-busy": ("xeon-avx512-2c/bitnet_2b_vs_llamacpp_q8_busy2.json", render_bitnet),
    "serve": ("xeon-avx512-2c/serve_2b.json", render_serve),
    "train": ("xeon-avx512-2c/train_tiny_quiet.json", render_train),
    "generate-ttt": ("xeon-avx512-2c/generate_base_ttt_linear_1t_quiet.json", render_generate),
    "generate-attention": ("xeon-avx512-2c/generate_base_attention_1t_quiet.json", render_generate),
}


def generate(text: str) -> str:
    """text with every marked table regenerated; KeyError for a marker without a renderer."""
    def one(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise KeyError(f"README marker bench:{name} has no renderer in benchmarks/report.py "
                           f"(known: {', '.join(TABLES)})")
        rel, render = TABLES[name]
        return f"{m.group(1)}{render(rel)}{m.group(4)}"
    return MARKER.sub(one, text)


def stale_tables(text: str) -> list[str]:
    """Names of the marked tables whose text differs from what generate() makes."""
    new = {m.group("name"): m.group("body") for m in MARKER.finditer(generate(text))}
    return [m.group("name") for m in MARKER.finditer(text) if new[m.group("name")] != m.group("body")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a README table differs from its records")
    ap.add_argument("--readme", type=Path, default=README)
    args = ap.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    if args.check:
        stale = stale_tables(text)
        for name in stale:
            print(f"{args.readme.name}: table bench:{name} differs from benchmarks/results/{TABLES[name][0]}; "
                  "run python benchmarks/report.py", file=sys.stderr)
        return 1 if stale else 0
    args.readme.write_text(generate(text), encoding="utf-8")
    print(f"regenerated {len(MARKER.findall(text))} tables in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
