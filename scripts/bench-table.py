#!/usr/bin/env python3
"""The side-by-side table of scripts/bench-vs-torch.sh from its JSON lines (standard library
only): one row per (mode, shape, variant) with both sides' times, the ratio and peak RSS.

    python3 scripts/bench-table.py bench-results/bench-vs-torch-*.jsonl [--markdown]

Training: seconds per step (median), ratio = Rust / PyTorch (below 1: Rust is faster).
Inference: tokens per second, ratio = Rust / PyTorch (above 1: Rust is faster).
"""
import json
import sys


def main(argv):
    markdown = "--markdown" in argv
    paths = [a for a in argv if not a.startswith("--")]
    rows = {}
    overhead = None
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.startswith("{"):
                    continue
                d = json.loads(line)
                if d.get("bench") == "mask_overhead":
                    overhead = d
                    continue
                if "error" in d:
                    print(f"error in {path}: {d}", file=sys.stderr)
                    continue
                key = (d.get("mode", "train"), d["shape"], d["variant"])
                rows.setdefault(key, {})[d["side"]] = d  # the last run of a config wins
    head = ["mode", "shape", "variant", "PyTorch", "Rust", "ratio", "PyTorch RSS MB", "Rust RSS MB"]
    table = []
    for (mode, shape, variant), sides in sorted(rows.items(), key=lambda kv: (kv[0][0] != "train", kv[0][1], kv[0][2])):
        t, r = sides.get("torch"), sides.get("rust")
        if mode == "train":
            metric, unit = "median_step_s", " s/step"
            tv = t and t[metric]
            rv = r and r[metric]
            ratio = f"{rv / tv:.2f}" if tv and rv else "-"
            fmt = lambda v: f"{v:.3f}" if v else "-"
        else:
            metric = "tokens_per_s"
            tv = t and t[metric]
            rv = r and r[metric]
            ratio = f"{rv / tv:.2f}" if tv and rv else "-"
            fmt = lambda v: f"{v:,.0f} tok/s" if v else "-"
        rss = lambda s: f"{s['peak_rss_mb']:,.0f}" if s else "-"
        table.append([mode, shape, variant, fmt(tv), fmt(rv), ratio, rss(t), rss(r)])
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
