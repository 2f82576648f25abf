#!/usr/bin/env python3
"""Turn the estimates of `cargo bench -p ferry-hl7 --bench parse` into the Markdown table of
BENCHMARKS.md ("HL7 parse (issue 3)").

Reads target/criterion/GROUP/FUNCTION/INPUT/new/{benchmark,estimates}.json. The time per
iteration is criterion's own headline figure (the slope estimate, or the mean when criterion
sampled flat); messages/s and MB/s (10^6 bytes) follow from it and the throughput the bench
declared. Ratios compare throughputs of functions of the same group and input.

Usage: python3 scripts/hl7-bench-table.py [TARGET_DIR]
"""

import json
import sys
from pathlib import Path

GROUPS = ["parse", "parse_get_pid5_1", "parse_read_all_fields", "serialise", "edit_serialise"]
INPUTS = ["adt_a01", "corpus", "corpus_with_pid"]


def load(root: Path):
    rows = {}
    for bench in root.glob("*/*/*/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        ns = (est.get("slope") or est["mean"])["point_estimate"]
        tp = meta["throughput"]["ElementsAndBytes"]
        rows[(meta["group_id"], meta["function_id"], meta["value_str"])] = (
            ns,
            tp["elements"] * 1e9 / ns,
            tp["bytes"] * 1e3 / ns,  # bytes/ns * 1e9 / 1e6
        )
    return rows


def fmt_time(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def main():
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("target")
    rows = load(target / "criterion")
    print("| group | input | function | time / iteration | messages/s | MB/s | ferry ÷ hl7_parser (target ≥ 10×) | plain_split ÷ ferry (target ≤ 2×) |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for group in GROUPS:
        for inp in INPUTS:
            funcs = sorted(
                (f for (g, f, i) in rows if g == group and i == inp),
                key=lambda f: (f != "ferry", f),
            )
            ferry = rows.get((group, "ferry", inp))
            for f in funcs:
                ns, mps, mbps = rows[(group, f, inp)]
                vs_hl7 = floor = ""
                if f == "ferry":
                    hl7 = rows.get((group, "hl7_parser", inp))
                    split = rows.get((group, "plain_split", inp))
                    vs_hl7 = f"{hl7[0] / ns:,.1f}×" if hl7 else ""
                    floor = f"{ns / split[0]:.3g}×" if split else ""
                print(
                    f"| {group} | {inp} | {f} | {fmt_time(ns)} | {fmt_num(mps)} | "
                    f"{fmt_num(mbps)} | {vs_hl7} | {floor} |"
                )


if __name__ == "__main__":
    main()
