#!/usr/bin/env python3
"""The side-by-side table of scripts/bench-vs-torch.sh from its JSON lines (standard library
only): one row per (mode, shape, variant) with both sides' times, the ratio and peak RSS.

    python3 scripts/bench-table.py bench-results/bench-vs-torch-*.jsonl [--markdown]

Training: seconds per step (median), ratio = Rust / PyTorch (below 1: Rust is faster).
Inference: tokens per second, ratio = Rust / PyTorch (above 1: Rust is faster).
A configuration measured in several rounds (bench-vs-torch.sh's ROUNDS, each round PyTorch then
Rust) shows each side's median over its rounds and the rounds' count; peak RSS is the largest.
"""
import json
import statistics
import sys


def main(argv):
    markdown = "--markdown" in argv
    paths = [a for a in argv if not a.startswith("--")]
    rows = {}
    overhead = None
    machines = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                d = json.loads(line)
                if d.get("bench") == "machine":
                    machines[json.dumps(d, sort_keys=True)] = d
                    continue
                if d.get("bench") == "mask_overhead":
                    overhead = d
                    continue
                if "error" in d:
                    print(f"error in {path}: {d}", file=sys.stderr)
                    continue
                key = (d.get("mode", "train"), d["shape"], d["variant"])
                rows.setdefault(key, {}).setdefault(d["side"], []).append(d)
    head = ["mode", "shape", "variant", "rounds", "PyTorch", "Rust", "ratio", "PyTorch RSS MB", "Rust RSS MB"]
    table = []
    for (mode, shape, variant), sides in sorted(rows.items(), key=lambda kv: (kv[0][0] != "train", kv[0][1], kv[0][2])):
        t, r = sides.get("torch", []), sides.get("rust", [])
        if mode == "train":
            metric = "median_step_s"
            fmt = lambda v: f"{v:.3f}" if v else "-"
        else:
            metric = "tokens_per_s"
            fmt = lambda v: f"{v:,.0f} tok/s" if v else "-"
        tv = statistics.median(x[metric] for x in t) if t else None
        rv = statistics.median(x[metric] for x in r) if r else None
        ratio = f"{rv / tv:.2f}" if tv and rv else "-"
        rss = lambda runs: f"{max(x['peak_rss_mb'] for x in runs):,.0f}" if runs else "-"
        n = f"{len(t)}/{len(r)}" if len(t) != len(r) else str(len(t))
        table.append([mode, shape, variant, n, fmt(tv), fmt(rv), ratio, rss(t), rss(r)])
    for m in machines.values():
        isa = "AVX-512" if m.get("avx512f") else ("AVX2" if m.get("avx2") else "no AVX2")
        print(f"machine: {m.get('cpu')} ({m.get('vendor')}, family {m.get('cpu_family')} model "
              f"{m.get('cpu_model')}, {isa}), {m.get('cpus')} CPUs, {m.get('mem_gib')} GiB; "
              f"torch {m.get('torch')} (CPU capability {m.get('torch_cpu_capability')}, "
              f"MKL {m.get('torch_mkl')})")
    if len(machines) > 1:
        print("warning: these files come from more than one machine; compare ratios per machine",
              file=sys.stderr)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(head, *table)]
        for row in [head] + table:
            print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
    print("training: s/step, ratio = Rust/PyTorch (≤ 0.9 is the target); inference: tokens/s, "
          "ratio = Rust/PyTorch (≥ 1.1 is the target)")
    if overhead:
        print(f"mask overhead (Rust, roberta-base ProAdapter step, masked ÷ unmasked): "
              f"{overhead['masked_s']:.3f} s ÷ {overhead['unmasked_s']:.3f} s = {overhead['ratio']:.3f} "
              "(≤ 1.03 is the target)")


if __name__ == "__main__":
    main(sys.argv[1:])
