#!/usr/bin/env python3
# sgemm throughput of numpy (its bundled OpenBLAS) and torch at roberta-base linear shapes,
# 2 threads; compare with `cargo bench --bench training -- gemm` (the gemm crate, via
# ops::frozen_linear). A benchmark, not a test.
import os, time
os.environ.setdefault("OPENBLAS_NUM_THREADS","2")
import numpy as np, torch
torch.set_num_threads(2)
for (m,k,n) in [(1024,768,768),(1024,768,3072),(1024,3072,768),(4096,768,3072)]:
    a=np.random.rand(m,k).astype(np.float32); b=np.random.rand(k,n).astype(np.float32)
    ta=torch.from_numpy(a); tb=torch.from_numpy(b)
    for name,f in [("numpy-openblas",lambda: a@b),("torch",lambda: ta@tb)]:
        f(); t=time.perf_counter(); r=5
        for _ in range(r): f()
        dt=(time.perf_counter()-t)/r
        print(f"{m}x{k}x{n} {name}: {2*m*k*n/dt/1e9:.0f} GFLOP/s")
