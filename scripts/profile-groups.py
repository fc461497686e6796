#!/usr/bin/env python3
"""Group `perf report --no-children --sort symbol --stdio` lines (stdin) by kind of work and
print a Markdown table: share of all CPU samples (both threads) per group, largest first."""
import re
import sys

GROUPS = [
    ("matrix multiply (gemm micro-kernels)", r"gemm_f32::microkernel|gemm.*microkernel"),
    ("matrix packing (gemm)", r"gemm_common::(simd|pack)|pack_operands|gemm_basic_generic"),
    ("fresh memory (memset, page faults, page clearing)",
     r"memset|clear_page|page_fault|do_anonymous_page|handle_mm_fault|memcg|__alloc_pages|rmqueue|lru"),
    ("copies (memmove, strided copies)", r"memmove|memcpy|copy_strided|copy2d"),
    ("thread sync and idle spinning (rayon, futex, scheduler)",
     r"rayon_core|sched|futex|finish_task_switch|BarrierGuard|spin_unlock|__rust_begin_short_backtrace|syscall|wait_until|switch_to|irqentry"),
    ("random numbers (dropout bits)", r"chacha|rand_core|rand::"),
    ("libm (erf, exp)", r"erff|erfc|expf|erf_f32|fmaf|libm"),
    ("Candle element-wise maps", r"candle_core::cpu_backend::utils::(binary_map|unary_map|Map1|Map2)|binary_map|unary_map"),
    ("fused kernels and other closures (LayerNorm, softmax, GELU, dropout, bias)",
     r"propetl_runtime::fused|call_mut|fold_with|ForEachConsumer|Map<I,F>|for_each|Producer|from_iter"),
]


def main():
    totals = {name: 0.0 for name, _ in GROUPS}
    other = 0.0
    for line in sys.stdin:
        m = re.match(r"\s+([0-9.]+)%\s+\[[.k]\]\s+(.*?)\s{2,}", line)
        if not m:
            continue
        pct, sym = float(m.group(1)), m.group(2)
        for name, pat in GROUPS:
            if re.search(pat, sym):
                totals[name] += pct
                break
        else:
            other += pct
    rows = sorted(totals.items(), key=lambda kv: -kv[1]) + [("other", other)]
    print("| work | share of CPU samples |")
    print("|---|---|")
    for name, pct in rows:
        print(f"| {name} | {pct:.1f}% |")


if __name__ == "__main__":
    main()
