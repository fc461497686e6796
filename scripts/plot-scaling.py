#!/usr/bin/env python3
"""Plot scripts/bench-scaling.sh's JSON lines: training tokens/s and peak memory against
sequence length, one line per (side, batch size). Writes PREFIX.png and PREFIX.svg.

    python3 scripts/plot-scaling.py bench-results/scaling-*.jsonl docs/scaling
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def main(path, prefix):
    rows = {}
    with open(path) as f:
        for line in f:
            if line.startswith("{"):
                d = json.loads(line)
                if "median_step_s" in d:
                    rows[(d["side"], d["batch"], d["seq"])] = d
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {1: "tab:green", 8: "tab:blue", 32: "tab:red"}
    names = {"torch": "PyTorch", "rust": "propetl"}
    for side, style in (("torch", "--"), ("rust", "-")):
        for batch in sorted({b for (_, b, _) in rows}):
            pts = sorted((s, d) for (sd, b, s), d in rows.items() if sd == side and b == batch)
            if not pts:
                continue
            seqs = [s for s, _ in pts]
            tps = [batch * s / d["median_step_s"] for s, d in pts]
            mem = [d["peak_rss_mb"] / 1024 for _, d in pts]
            label = f"{names[side]}, batch {batch}"
            ax_t.plot(seqs, tps, style, marker="o", color=colors.get(batch), label=label)
            ax_m.plot(seqs, mem, style, marker="o", color=colors.get(batch), label=label)
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_xticks([64, 128, 256, 512])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(v)}"))
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(alpha=0.3)
    ax_t.set_ylabel("training tokens / s")
    ax_t.set_title("roberta-base ProAdapter training step, 2 threads")
    ax_m.set_ylabel("peak RSS (GiB)")
    ax_m.set_yscale("log", base=2)
    ax_m.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax_m.set_title("peak memory (PyTorch includes ≈0.7 GiB of import)")
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", frameon=False)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    for ext in ("png", "svg"):
        fig.savefig(f"{prefix}.{ext}", dpi=130)
    print(f"wrote {prefix}.png and {prefix}.svg")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
