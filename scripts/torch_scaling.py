#!/usr/bin/env python3
"""PyTorch side of the scaling benchmark (scripts/bench-scaling.sh): one training step of the
reference ProAdapter (../shared/torch_bench/bench.py's `run_one`, unchanged) at a batch size
and sequence length that bench.py's fixed shapes do not offer. Prints bench.py's JSON line.

    python3 scripts/torch_scaling.py --batch 8 --seq 256 [--variant pro_adapter] [--steps 3]
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "torch_bench"))
import bench  # noqa: E402  (../shared/torch_bench/bench.py)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--variant", default="pro_adapter")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    name = f"base_b{a.batch}_s{a.seq}"
    # roberta-base dimensions at this batch and length (bench.py reads SHAPES[spec["shape"]])
    bench.SHAPES[name] = dict(bench.SHAPES["base"], batch=a.batch, seq=a.seq)
    spec = dict(shape=name, variant=a.variant, steps=a.steps, warmup=a.warmup, threads=a.threads, mode="train")
    out = bench.run_one(spec)
    out.update(side="torch", shape="base", batch=a.batch, seq=a.seq)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
