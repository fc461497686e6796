#!/usr/bin/env python3
"""One JSON line naming the machine a benchmark ran on (standard library; torch if importable):
CPU model, vendor, family/model, CPUs, memory, AVX-512/AVX2, and PyTorch's CPU capability and
BLAS. The ratios of scripts/bench-vs-torch.sh depend on the CPU (the gemm crate's AVX-512
kernels run at full width on some CPUs and double-pumped on others; MKL picks its code path
by vendor), so every benchmark file starts with this line and the table prints it.

    python3 scripts/machine-info.py            # run it with the Python the benchmark uses
"""
import json
import os
import re


def field(info, key):
    m = re.search(rf"^{key}\s*:\s*(.*)$", info, re.M)
    return m[1].strip() if m else None


def main():
    try:
        info = open("/proc/cpuinfo").read()
    except OSError:
        info = ""
    flags = set((field(info, "flags") or "").split())
    try:
        mem = re.search(r"MemTotal:\s*(\d+)", open("/proc/meminfo").read())
    except OSError:
        mem = None
    line = {
        "bench": "machine",
        "cpu": field(info, "model name"),
        "vendor": field(info, "vendor_id"),
        "cpu_family": field(info, "cpu family"),
        "cpu_model": field(info, "model"),
        "cpus": os.cpu_count(),
        "mem_gib": round(int(mem[1]) / 2**20, 1) if mem else None,
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
    }
    try:
        import torch

        line["torch"] = torch.__version__
        line["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        line["torch_mkl"] = torch.backends.mkl.is_available()
    except Exception as e:  # the Rust-only benchmarks run without torch
        line["torch"] = f"unavailable ({type(e).__name__})"
    print(json.dumps(line))


if __name__ == "__main__":
    main()
