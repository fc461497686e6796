//! Fused CPU kernels with hand-written backward passes, for the hot paths of a frozen
//! backbone: softmax over the last dimension (alone, or with the attention scale and additive
//! bias folded in), exact (erf) GELU, LayerNorm with frozen parameters and dropout. Each
//! replaces 3–15 composed element-wise passes (and their backward graph) with one parallel
//! pass forward and one backward. They are reached through [`crate::ops`], which falls back to
//! the composed formulations off the CPU or for non-f32 tensors, and are tested against those
//! formulations.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use multiversion::multiversion;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Rows processed per parallel task (keeps scheduling overhead small on short rows).
const MIN_ROWS: usize = 16;

// The row and block bodies below are `#[multiversion(targets = "simd")]` functions: compiled
// once per SIMD level of the crate's preset list and picked at run time, so their loops
// vectorize with wide registers instead of the portable x86-64 baseline (SSE2). On the
// AVX-512 machine of docs/performance.md the preset picks its AVX2 + FMA version; explicit
// AVX-512 versions of every kernel measured slower there (a roberta-base step 2.46/2.51 s
// against 2.20/2.16 s). The GELU kernels, bound by arithmetic (erf's polynomial, a division
// and an `exp` per element) rather than memory, have an AVX-512 version first: the forward
// pass over [1024, 3072] 2.1–2.5 ms → 1.5–2.1 ms (`cargo bench --bench training -- gelu`).
// The instructions change, the arithmetic does not: no fused multiply-adds are formed and every
// sum has a fixed order, so all versions give the same bits.

/// Independent partial sums of a row reduction: f64 sums in a fixed order of [`LANES`]
/// interleaved accumulators vectorize (one running sum cannot, every add waits for the last).
const LANES: usize = 8;

/// `Σ term(a[i], b[i], c[i])` in f64 over [`LANES`] interleaved partial sums, in a fixed
/// order (the result depends only on the row, not on the CPU or on other rows); the slices are
/// of one length.
#[inline(always)]
fn lane_sum3(a: &[f32], b: &[f32], c: &[f32], term: impl Fn(f32, f32, f32) -> f64) -> f64 {
    let (blocks_a, tail_a) = a.as_chunks::<LANES>();
    let (blocks_b, tail_b) = b.as_chunks::<LANES>();
    let (blocks_c, tail_c) = c.as_chunks::<LANES>();
    let mut acc = [0f64; LANES];
    for ((block_a, block_b), block_c) in blocks_a.iter().zip(blocks_b).zip(blocks_c) {
        for j in 0..LANES {
            acc[j] += term(block_a[j], block_b[j], block_c[j]);
        }
    }
    // the tail goes into the lanes its positions belong to, so a row with trailing zero
    // terms (attention over padding) sums to exactly what the shorter row does
    for (j, ((&x, &y), &z)) in tail_a.iter().zip(tail_b).zip(tail_c).enumerate() {
        acc[j] += term(x, y, z);
    }
    acc.iter().sum::<f64>()
}

/// `Σ term(a[i])`, as [`lane_sum3`].
#[inline(always)]
fn lane_sum(a: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    lane_sum3(a, a, a, |x, _, _| term(x))
}

/// `Σ term(a[i], b[i])`, as [`lane_sum3`].
#[inline(always)]
fn lane_sum2(a: &[f32], b: &[f32], term: impl Fn(f32, f32) -> f64) -> f64 {
    lane_sum3(a, b, b, |x, y, _| term(x, y))
}

/// `f(out_row, row)` over the rows of `n` elements of `x`, in parallel: the row loop of the
/// fused row-wise kernels.
/// `f` must write every element of its output row.
fn map_rows(
    x: &[f32],
    n: usize,
    f: impl Fn(&mut [MaybeUninit<f32>], &[f32]) + Sync + Send,
) -> Vec<f32> {
    // SAFETY: the rows of n elements cover the output, and every `f` writes its whole row
    unsafe {
        fresh(x.len(), |out| {
            out.par_chunks_mut(n)
                .zip(x.par_chunks(n))
                .with_min_len(MIN_ROWS)
                .for_each(|(o, r)| f(o, r))
        })
    }
}

/// `f(out_row, a_row, b_row)` over paired rows of `n` elements, in parallel (backward passes:
/// a saved tensor and the incoming gradient).
fn map_row_pairs(
    a: &[f32],
    b: &[f32],
    n: usize,
    f: impl Fn(&mut [MaybeUninit<f32>], &[f32], &[f32]) + Sync + Send,
) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "row pairs of unequal lengths");
    // SAFETY: as in `map_rows`, every `f` writes its whole row
    unsafe {
        fresh(a.len(), |out| {
            out.par_chunks_mut(n)
                .zip(a.par_chunks(n).zip(b.par_chunks(n)))
                .with_min_len(MIN_ROWS)
                .for_each(|(o, (ra, rb))| f(o, ra, rb))
        })
    }
}

/// The forward pass of a row-wise op over the last dimension of a contiguous f32 input:
/// `row(out_row, in_row)` per row (must write its whole output row), the input's shape.
fn last_dim_rows(
    s: &CpuStorage,
    l: &Layout,
    row: impl Fn(&mut [MaybeUninit<f32>], &[f32]) + Sync + Send,
) -> Result<(CpuStorage, Shape)> {
    let x = f32_slice(s, l)?;
    let n = *l.dims().last().unwrap_or(&1);
    Ok((CpuStorage::F32(map_rows(x, n, row)), l.shape().clone()))
}

/// The input gradient of a row-wise op from a saved tensor (its input or output) and the
/// incoming gradient: `row(d_row, saved_row, grad_row)` per row over the last dimension.
fn last_dim_row_pairs(
    saved: &Tensor,
    grad: &Tensor,
    row: impl Fn(&mut [MaybeUninit<f32>], &[f32], &[f32]) + Sync + Send,
) -> Result<Tensor> {
    let n = *saved.dims().last().unwrap_or(&1);
    let dx = with_f32(saved, |y| {
        with_f32(grad, |g| Ok(map_row_pairs(y, g, n, row)))
    })?;
    Tensor::from_vec(dx, saved.shape(), saved.device())
}

/// A fresh `Vec<f32>` of `len` elements written by `fill`, without zero-filling it first
/// (fresh outputs were ≈2% of a step in `memset`).
///
/// # Safety
/// `fill` must write every element of the slice it gets.
unsafe fn fresh(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's contract: all `len` elements are initialized
    unsafe { out.set_len(len) };
    out
}

/// The slice `o` as initialized floats.
///
/// # Safety
/// Every element of `o` must have been written.
#[inline(always)]
unsafe fn assume_init(o: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and the caller guarantees every element
    // is initialized
    unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("fused op: expected f32")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("fused op: input must be contiguous"),
    }
}

/// Run `f` on the contiguous f32 data of `t` (borrowed, no copy when `t` already is).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("fused op: expected a CPU tensor")
    };
    f(f32_slice(cpu, layout)?)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

/// `lhs [m, k] · rhs [k, n] (+ bias, broadcast over rows)` into a fresh row-major `[m, n]`,
/// by one call of the `gemm` crate (Candle's own CPU matmul backend). The output is not
/// zero-filled first (gemm overwrites it) and a bias is written into it before the product,
/// which gemm then accumulates onto: one pass over the output instead of three (Candle's
/// zero fill, product, bias add). `lhs_strides` / `rhs_strides` are (column, row) strides in
/// elements; both operands must lie inside their slices.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    if !operands_fit((m, n, k), lhs, lhs_strides, rhs, rhs_strides)
        || bias.is_some_and(|b| b.len() != n)
    {
        candle_core::bail!("gemm_rows: operands do not fit their slices")
    }
    let mut dst: Vec<f32> = Vec::with_capacity(m * n);
    match bias {
        Some(b) => (0..m).for_each(|_| dst.extend_from_slice(b)),
        None if k == 0 => dst.resize(m * n, 0.0),
        None => {}
    }
    if m == 0 || n == 0 || k == 0 {
        return Ok(dst);
    }
    // SAFETY: the operands fit their slices (checked above); `dst` has capacity m·n and gemm
    // writes every element of the row-major [m, n] output through the raw pointer (reading
    // them first only when there is a bias, which they then hold); its length is set after.
    unsafe {
        gemm_call(
            dst.as_mut_ptr(),
            n,
            (m, n, k),
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            bias.is_some(),
            1.0,
        );
        dst.set_len(m * n);
    }
    Ok(dst)
}

/// Whether `lhs [m, k]` and `rhs [k, n]`, read through (column, row) strides, lie inside their
/// slices.
fn operands_fit(
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) -> bool {
    let last = |rows: usize, cols: usize, (cs, rs): (usize, usize)| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    !((m > 0 && k > 0 && last(m, k, lhs_strides) >= lhs.len())
        || (k > 0 && n > 0 && last(k, n, rhs_strides) >= rhs.len()))
}

/// `dst = (dst if read_dst) + beta · lhs · rhs` by one call of the `gemm` crate on the compute
/// threads; `dst` is row-major `[m, n]` with rows `dst_rs` apart.
///
/// # Safety
/// The operands must fit their slices ([`operands_fit`]), `m, n, k > 0`, and `dst` must be
/// valid for writes (and reads, with `read_dst`) at `i · dst_rs + j` for `i < m`, `j < n`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_call(
    dst: *mut f32,
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    read_dst: bool,
    beta: f32,
) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's contract
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs.as_ptr(),
            lhs_strides.0 as isize,
            lhs_strides.1 as isize,
            rhs.as_ptr(),
            rhs_strides.0 as isize,
            rhs_strides.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `dst [m, n] (row-major) = (dst if accumulate) + scale · lhs [m, k] · rhs [k, n]`, one call
/// of the `gemm` crate; strides as in [`gemm_rows`]. With `accumulate` false `dst`'s old
/// values are not read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    accumulate: bool,
    scale: f32,
) -> Result<()> {
    if dst.len() != m * n {
        candle_core::bail!("gemm_into: the output does not hold [{m}, {n}]")
    }
    gemm_into_columns(
        dst,
        (n, 0),
        (m, n, k),
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        accumulate,
        scale,
    )
}

/// [`gemm_into`] for a block of columns of a wider row-major output: `dst` rows are
/// `row_len` apart and the `[m, n]` product lands in columns `at .. at + n` of each (the
/// other columns are neither read nor written).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_into_columns(
    dst: &mut [f32],
    (row_len, at): (usize, usize),
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    accumulate: bool,
    scale: f32,
) -> Result<()> {
    if at + n > row_len
        || (m > 0 && n > 0 && (m - 1) * row_len + at + n > dst.len())
        || !operands_fit((m, n, k), lhs, lhs_strides, rhs, rhs_strides)
    {
        candle_core::bail!("gemm_into: operands do not fit their slices")
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(row_len).take(m) {
                row[at..at + n].fill(0.0);
            }
        }
        return Ok(());
    }
    // SAFETY: the operands fit and every [m, n] position (row i at i·row_len + at + j, j < n)
    // lies inside `dst`'s initialized elements (checked above)
    unsafe {
        gemm_call(
            dst.as_mut_ptr().add(at),
            row_len,
            (m, n, k),
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            accumulate,
            scale,
        )
    };
    Ok(())
}

/// A raw output pointer shared by the parallel tasks of [`HeadMatmul`], each writing its own
/// disjoint block.
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint ranges of one allocation that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// How an operand of [`HeadMatmul`] is read as `[B, H, rows, cols]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadView {
    /// `Some(H)`: the tensor is a projection `[B, S, H·d]`, read per head as `[B, H, S, d]`
    /// (no copy); `None`: a rank-4 `[B, H, rows, cols]` tensor, read through its strides.
    pub split: Option<usize>,
    /// Read with its last two dimensions swapped (`Kᵀ`, `Pᵀ`).
    pub transposed: bool,
}

impl HeadView {
    /// A rank-4 tensor as it is.
    pub const AS_IS: HeadView = HeadView {
        split: None,
        transposed: false,
    };

    /// A projection `[B, S, heads·d]` read per head.
    pub fn split(heads: usize) -> HeadView {
        HeadView {
            split: Some(heads),
            transposed: false,
        }
    }

    /// The same view with its last two dimensions swapped.
    pub fn t(self) -> HeadView {
        HeadView {
            transposed: !self.transposed,
            ..self
        }
    }

    /// (element offset, dims, strides) of the `[B, H, rows, cols]` view of `l`.
    fn view(self, l: &Layout) -> Result<(usize, [usize; 4], [usize; 4])> {
        let (dims, st) = (l.dims(), l.stride());
        let (mut d, mut s) = match self.split {
            None => {
                if st.len() != 4 {
                    candle_core::bail!(
                        "head-matmul: rank-4 operands expected, got rank {}",
                        st.len()
                    )
                }
                (
                    [dims[0], dims[1], dims[2], dims[3]],
                    [st[0], st[1], st[2], st[3]],
                )
            }
            Some(heads) => {
                if st.len() != 3 || heads == 0 || dims[2] % heads != 0 {
                    candle_core::bail!(
                        "head-matmul: a projection [B, S, {heads}·d] expected, got {dims:?}"
                    )
                }
                let hd = dims[2] / heads;
                (
                    [dims[0], heads, dims[1], hd],
                    [st[0], hd * st[2], st[1], st[2]],
                )
            }
        };
        if self.transposed {
            d.swap(2, 3);
            s.swap(2, 3);
        }
        Ok((l.start_offset(), d, s))
    }
}

/// `[B, H, M, K] · [B, H, K, N] → [B, H, M, N]`: the attention products (scores = Q·Kᵀ,
/// context = P·V) as one op. Candle's batched matmul runs one multi-threaded gemm per (batch,
/// head) — 96 thread hand-offs for a roberta-base layer's 128 × 128 × 64 products — and needs
/// contiguous operands, so the per-head views of Q, K and V were copied first. Here each
/// (batch, head) product is one single-threaded gemm, the products run in parallel, and the
/// operands are read through their strides: a projection `[B, S, H·d]` is split into heads and
/// transposed inside the op ([`HeadView`]), and with `merge_heads` the product is written as
/// `[B, M, H·N]` (the layout the output projection reads) — no Candle transpose or reshape
/// nodes, so neither pass copies a per-head view. The backward pass is the same op on
/// transposed views, each gradient written in its operand's own layout: `dA = G · Bᵀ`,
/// `dB = Aᵀ · G`.
pub(crate) struct HeadMatmul {
    pub a: HeadView,
    pub b: HeadView,
    pub merge_heads: bool,
}

/// Whether the strided rank-4 view `(offset, strides)` of `dims` lies inside `len` elements.
fn fits(len: usize, offset: usize, dims: &[usize], strides: &[usize; 4]) -> bool {
    dims.contains(&0)
        || offset
            + dims
                .iter()
                .zip(strides)
                .map(|(&d, &s)| (d - 1) * s)
                .sum::<usize>()
            < len
}

impl candle_core::CustomOp2 for HeadMatmul {
    fn name(&self) -> &'static str {
        "head-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("head-matmul: expected f32")
        };
        let (a_off, da, sa) = self.a.view(l1)?;
        let (b_off, db, sb) = self.b.view(l2)?;
        let [ba, ha, m, k] = da;
        let [bb, hb, kb, n] = db;
        if (ba, ha, k) != (bb, hb, kb) {
            candle_core::bail!("head-matmul: shapes {:?} and {:?} do not multiply", da, db)
        }
        if !fits(a.len(), a_off, &da, &sa) || !fits(b.len(), b_off, &db, &sb) {
            candle_core::bail!("head-matmul: an operand does not fit its storage")
        }
        let (heads, block) = (ba * ha, m * n);
        // where (batch, head) i's [m, n] block starts and its row stride
        let (out_at, out_rs) = if self.merge_heads {
            (
                Box::new(move |i: usize| (i / ha) * m * ha * n + (i % ha) * n)
                    as Box<dyn Fn(usize) -> usize + Sync>,
                ha * n,
            )
        } else {
            (
                Box::new(move |i: usize| i * block) as Box<dyn Fn(usize) -> usize + Sync>,
                n,
            )
        };
        // A row-major lhs times a column-major rhs (Q · a transposed K view) is a set of dot
        // products, which gemm computes with other kernels (horizontal sums) when m · n is small:
        // a row's scores would then depend on how much padding its batch has. Such an rhs is
        // copied row-major per (batch, head) first, so every product takes the same kernels.
        let dot_layout = sa[3] == 1 && sb[2] == 1 && sb[3] != 1;
        let mut out: Vec<f32> = Vec::with_capacity(heads * block);
        if k == 0 {
            out.resize(heads * block, 0.0);
        } else if block > 0 {
            let dst = OutPtr(out.as_mut_ptr());
            (0..heads).into_par_iter().for_each(|i| {
                let (bi, hi) = (i / ha, i % ha);
                let dst = &dst;
                let rhs_at = b_off + bi * sb[0] + hi * sb[1];
                let packed: Vec<f32>;
                let (rhs, rhs_cs, rhs_rs) = if dot_layout {
                    // column by column: each column of a transposed view is contiguous
                    // in the source; the k × n destination stays in the L1 cache
                    let mut buffer = vec![0f32; k * n];
                    for c in 0..n {
                        let column = &b[rhs_at + c * sb[3]..];
                        for r in 0..k {
                            buffer[r * n + c] = column[r * sb[2]];
                        }
                    }
                    packed = buffer;
                    (packed.as_slice(), 1, n)
                } else {
                    (&b[rhs_at..], sb[3], sb[2])
                };
                // SAFETY: both operands were checked to lie inside their slices for every
                // (batch, head) index (a packed rhs is k × n, row-major); task `i` writes only
                // its own m × n block of the output (rows `out_rs` apart; the blocks of
                // different tasks are disjoint in both layouts), all of which gemm overwrites
                // (`read_dst` false); the length is set after every task.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        dst.0.add(out_at(i)),
                        1,
                        out_rs as isize,
                        false,
                        a.as_ptr().add(a_off + bi * sa[0] + hi * sa[1]),
                        sa[3] as isize,
                        sa[2] as isize,
                        rhs.as_ptr(),
                        rhs_cs as isize,
                        rhs_rs as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        }
        // SAFETY: every element was written above (or zero-filled when k == 0).
        unsafe { out.set_len(heads * block) };
        let shape = if self.merge_heads {
            Shape::from((ba, m, ha * n))
        } else {
            Shape::from((ba, ha, m, n))
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // the output gradient, read per head as [B, H, M, N]
        let g = if self.merge_heads {
            HeadView::split(self.heads(a)?)
        } else {
            HeadView::AS_IS
        };
        // each gradient in its operand's own layout: for a transposed view, the transpose of
        // the product is computed (operands swapped) instead
        let product = |lhs: (&Tensor, HeadView), rhs: (&Tensor, HeadView), merge: bool| {
            lhs.0.apply_op2_no_bwd(
                rhs.0,
                &HeadMatmul {
                    a: lhs.1,
                    b: rhs.1,
                    merge_heads: merge,
                },
            )
        };
        let da = if a.track_op() {
            let merge = self.a.split.is_some();
            Some(if self.a.transposed {
                // (G · Bᵀ)ᵀ = B · Gᵀ
                product((b, self.b), (grad, g.t()), merge)?
            } else {
                product((grad, g), (b, self.b.t()), merge)?
            })
        } else {
            None
        };
        let db = if b.track_op() {
            let merge = self.b.split.is_some();
            Some(if self.b.transposed {
                // (Aᵀ · G)ᵀ = Gᵀ · A
                product((grad, g.t()), (a, self.a), merge)?
            } else {
                product((a, self.a.t()), (grad, g), merge)?
            })
        } else {
            None
        };
        Ok((da, db))
    }
}

impl HeadMatmul {
    /// The head count H of this product: a split operand's, else the lhs's second dimension.
    fn heads(&self, a: &Tensor) -> Result<usize> {
        match (self.a.split, self.b.split) {
            (Some(h), _) | (_, Some(h)) => Ok(h),
            (None, None) => a.dim(1),
        }
    }
}

/// `y [rows, n] + b [n]` (a trainable bias broadcast over rows). Candle's `broadcast_add`
/// backward reduces the gradient over rows with its generic strided reduction, ≈ 1.6 ms for a
/// roberta-base adapter's [1024, 768]; here the bias gradient is a column sum over fixed
/// blocks of rows (f64 partial sums, added in block order: the same bits whatever the thread
/// count).
pub(crate) struct BiasAdd;

/// Rows per block of [`BiasAdd`]'s column sums.
const BIAS_BLOCK_ROWS: usize = 64;

#[multiversion(targets = "simd")]
fn add_row(o: &mut [MaybeUninit<f32>], r: &[f32], b: &[f32]) {
    for ((o, &r), &b) in o.iter_mut().zip(r).zip(b) {
        o.write(r + b);
    }
}

#[multiversion(targets = "simd")]
fn accumulate_rows(acc: &mut [f64], rows: &[f32], n: usize) {
    for row in rows.chunks_exact(n) {
        for (a, &g) in acc.iter_mut().zip(row) {
            *a += g as f64;
        }
    }
}

/// Column sums of a row-major `[rows, n]` (see [`BiasAdd`]).
fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let blocks: Vec<Vec<f64>> = g
        .par_chunks(BIAS_BLOCK_ROWS * n)
        .map(|block| {
            let mut acc = vec![0f64; n];
            accumulate_rows(&mut acc, block, n);
            acc
        })
        .collect();
    let mut total = vec![0f64; n];
    for block in &blocks {
        for (t, &v) in total.iter_mut().zip(block) {
            *t += v;
        }
    }
    total.into_iter().map(|v| v as f32).collect()
}

impl candle_core::CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (_, n) = l1.shape().dims2()?;
        if b.len() != n {
            candle_core::bail!("bias-add: a bias of {} for rows of {n}", b.len())
        }
        let out = if n == 0 {
            Vec::new()
        } else {
            map_rows(y, n, |o, r| add_row(o, r, b))
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        y: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = b.dim(0)?;
        let dy = y.track_op().then(|| grad.clone());
        let db = if b.track_op() && n > 0 {
            let sums = with_f32(grad, |g| Ok(column_sums(g, n)))?;
            Some(Tensor::from_vec(sums, n, grad.device())?)
        } else {
            None
        };
        Ok((dy, db))
    }
}

/// `[prefix; x]` per sequence: a `[P, H]` prefix (keys or values, shared by the batch) in
/// front of each `x [B, S, H]`, giving `[B, P + S, H]`. Replaces Candle's `cat` of the
/// prefix broadcast over the batch (a strided copy forward; a narrow, a padded gradient and a
/// strided batch reduction backward): forward one copy per row, backward one copy for `x` and
/// a sum over the batch for the prefix (fixed order, the same bits on any thread count).
pub(crate) struct PrefixCat;

impl candle_core::CustomOp2 for PrefixCat {
    fn name(&self) -> &'static str {
        "prefix-cat"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (prefix, x) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (p, h) = l1.shape().dims2()?;
        let (b, s, hx) = l2.shape().dims3()?;
        if hx != h {
            candle_core::bail!("prefix-cat: a prefix of width {h} for rows of {hx}")
        }
        let per_seq = (p + s) * h;
        let mut out = Vec::with_capacity(b * per_seq);
        for seq in 0..b {
            out.extend_from_slice(prefix);
            out.extend_from_slice(&x[seq * s * h..(seq + 1) * s * h]);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, p + s, h))))
    }

    fn bwd(
        &self,
        prefix: &Tensor,
        x: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (p, h) = prefix.dims2()?;
        let (b, s, _) = x.dims3()?;
        let per_seq = (p + s) * h;
        let (dprefix, dx) = with_f32(grad, |g| {
            let dprefix = prefix.track_op().then(|| {
                let mut acc = vec![0f32; p * h];
                for seq in 0..b {
                    let rows = &g[seq * per_seq..seq * per_seq + p * h];
                    acc.iter_mut().zip(rows).for_each(|(a, &v)| *a += v);
                }
                acc
            });
            let dx = x.track_op().then(|| {
                let mut dx = Vec::with_capacity(b * s * h);
                for seq in 0..b {
                    dx.extend_from_slice(&g[seq * per_seq + p * h..(seq + 1) * per_seq]);
                }
                dx
            });
            Ok((dprefix, dx))
        })?;
        let dev = grad.device();
        Ok((
            dprefix
                .map(|d| Tensor::from_vec(d, (p, h), dev))
                .transpose()?,
            dx.map(|d| Tensor::from_vec(d, (b, s, h), dev))
                .transpose()?,
        ))
    }
}

/// Whether the fused kernels apply to `x`.
pub(crate) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Softmax over the last dimension.
pub(crate) struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        last_dim_rows(s, l, softmax_row)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        softmax_backward(res, grad, 1.0).map(Some)
    }
}

/// Log-softmax over the last dimension: `x − max − log Σ exp(x − max)` per row (the sum in
/// f64 lanes), and backward `g − softmax(x) · Σ g` from the saved output — one pass each way
/// instead of the composed form's six forward and about as many backward (a T5 step's loss
/// over a 32,128-word vocabulary).
pub(crate) struct LogSoftmax;

/// One row of [`LogSoftmax`].
#[multiversion(targets = "simd")]
fn log_softmax_row(o: &mut [MaybeUninit<f32>], r: &[f32]) {
    let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = lane_sum(r, |v| exp(v - max) as f64).ln() as f32;
    for (o, &v) in o.iter_mut().zip(r) {
        o.write((v - max) - lse);
    }
}

/// One row of the [`LogSoftmax`] input gradient: `d = g − exp(y) · Σ g`.
#[multiversion(targets = "simd")]
fn log_softmax_backward_row(d: &mut [MaybeUninit<f32>], y: &[f32], g: &[f32]) {
    let total = lane_sum(g, |v| v as f64) as f32;
    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
        d.write(g - exp(y) * total);
    }
}

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "log-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        last_dim_rows(s, l, log_softmax_row)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        last_dim_row_pairs(res, grad, log_softmax_backward_row).map(Some)
    }
}

/// `o = softmax(r)` (max-subtracted, the vectorizable [`exp`]).
#[multiversion(targets = "simd")]
fn softmax_row(o: &mut [MaybeUninit<f32>], r: &[f32]) {
    let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (o, &v) in o.iter_mut().zip(r) {
        o.write(exp(v - max));
    }
    // SAFETY: the loop above wrote every element
    normalize_row(unsafe { assume_init(o) });
}

/// Divide a row of non-negative values by its (f64) sum.
#[inline(always)]
fn normalize_row(o: &mut [f32]) {
    let inv = (1.0 / lane_sum(o, |v| v as f64)) as f32;
    o.iter_mut().for_each(|v| *v *= inv);
}

/// `d = scale · y ⊙ (g − ⟨y, g⟩)`: one row of the softmax input gradient.
#[multiversion(targets = "simd")]
fn softmax_backward_row(d: &mut [MaybeUninit<f32>], y: &[f32], g: &[f32], scale: f32) {
    let dot = lane_sum2(y, g, |a, b| (a * b) as f64) as f32;
    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
        d.write(scale * y * (g - dot));
    }
}

/// `scale · y ⊙ (g − ⟨y, g⟩)` row by row: the input gradient of `softmax(scale · x + c)`.
fn softmax_backward(res: &Tensor, grad: &Tensor, scale: f32) -> Result<Tensor> {
    last_dim_row_pairs(res, grad, |d, yr, gr| {
        softmax_backward_row(d, yr, gr, scale)
    })
}

// Padding does not change a row's probabilities (so the batch size does not change a
// prediction): masked positions get exactly 0 from [`exp`], and [`lane_sum3`] adds every
// position into the same lane whatever the row's length, so trailing zeros leave the sum's
// bits alone.

/// Attention probabilities `softmax(scale · scores + bias)` over the last dimension, where
/// `scores` is `[B, H, S, K]` and the frozen `bias` broadcasts to it (each of its first
/// three dimensions is 1 or the full size: a padding mask `[B, 1, 1, K]`, T5's position bias
/// `[1, H, S, K]`, or their sum). The backward pass reaches `scores` only.
pub(crate) struct AttentionSoftmax {
    scale: f32,
    bias: Arc<Vec<f32>>,
    /// `bias`'s sizes over (B, H, S); each 1 or the scores' size.
    bias_dims: [usize; 3],
}

impl AttentionSoftmax {
    /// `None` when `bias` does not broadcast to `scores` as described above.
    pub(crate) fn new(scores: &Tensor, scale: f32, bias: &Tensor) -> Result<Option<Self>> {
        let (Ok(sd), Ok(bd)) = (scores.dims4(), bias.dims4()) else {
            return Ok(None);
        };
        let fits = |b: usize, s: usize| b == 1 || b == s;
        if bd.3 != sd.3 || !fits(bd.0, sd.0) || !fits(bd.1, sd.1) || !fits(bd.2, sd.2) {
            return Ok(None);
        }
        Ok(Some(Self {
            scale,
            bias: Arc::new(host(&bias.to_dtype(DType::F32)?)?),
            bias_dims: [bd.0, bd.1, bd.2],
        }))
    }
}

/// `o = softmax(scale · r + c)`.
#[multiversion(targets = "simd")]
fn attention_softmax_row(o: &mut [MaybeUninit<f32>], r: &[f32], c: &[f32], scale: f32) {
    for ((o, &v), &c) in o.iter_mut().zip(r).zip(c) {
        o.write(v * scale + c);
    }
    // SAFETY: the loop above wrote every element
    let o = unsafe { assume_init(o) };
    let max = o.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    o.iter_mut().for_each(|v| *v = exp(*v - max));
    normalize_row(o);
}

impl CustomOp1 for AttentionSoftmax {
    fn name(&self) -> &'static str {
        "attention-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let (_, h, q, k) = l.shape().dims4()?;
        let [bb, bh, bs] = self.bias_dims;
        let bias = &self.bias;
        let scale = self.scale;
        // SAFETY: the rows of k elements cover the output and each row kernel writes its row
        let out = unsafe {
            fresh(x.len(), |out| {
                out.par_chunks_mut(k)
                    .zip(x.par_chunks(k))
                    .enumerate()
                    .with_min_len(MIN_ROWS)
                    .for_each(|(row, (o, r))| {
                        let (bi, hi, si) = (row / (h * q), (row / q) % h, row % q);
                        let off = (((bi % bb) * bh + hi % bh) * bs + si % bs) * k;
                        attention_softmax_row(o, r, &bias[off..off + k], scale);
                    })
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        softmax_backward(res, grad, self.scale).map(Some)
    }
}

/// LayerNorm over the last dimension with frozen `weight` and `bias`: the backward pass
/// reaches the input only (`dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`, `ĝ = g ⊙ w`).
/// Row statistics accumulate in f64.
pub(crate) struct FrozenLayerNorm {
    weight: Arc<Vec<f32>>,
    bias: Arc<Vec<f32>>,
    eps: f64,
}

impl FrozenLayerNorm {
    pub(crate) fn new(weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Arc::new(host(weight)?),
            bias: Arc::new(host(bias)?),
            eps,
        })
    }
}

/// Mean and `1 / sqrt(var + eps)` (biased variance) of one row.
#[inline(always)]
fn row_stats(r: &[f32], eps: f64) -> (f32, f32) {
    let n = r.len() as f64;
    let mean = lane_sum(r, |v| v as f64) / n;
    let var = lane_sum(r, |v| {
        let d = v as f64 - mean;
        d * d
    }) / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `o = (r − mean) · rstd · w + b`: one row of the LayerNorm forward pass.
#[multiversion(targets = "simd")]
fn layer_norm_row(o: &mut [MaybeUninit<f32>], r: &[f32], w: &[f32], b: &[f32], eps: f64) {
    let (mean, rstd) = row_stats(r, eps);
    for (((o, &v), &w), &b) in o.iter_mut().zip(r).zip(w).zip(b) {
        o.write((v - mean) * rstd * w + b);
    }
}

/// One row of the LayerNorm input gradient (see [`FrozenLayerNorm`]).
#[multiversion(targets = "simd")]
fn layer_norm_backward_row(d: &mut [MaybeUninit<f32>], r: &[f32], g: &[f32], w: &[f32], eps: f64) {
    let n = r.len() as f64;
    let (mean, rstd) = row_stats(r, eps);
    // ĝ = g ⊙ w, x̂ = (x − mean) · rstd
    let sum_g = lane_sum2(g, w, |g, w| (g * w) as f64);
    let sum_gx = lane_sum3(g, w, r, |g, w, x| {
        (g * w) as f64 * ((x - mean) * rstd) as f64
    });
    let (mg, mgx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
    for (((d, &x), &g), &w) in d.iter_mut().zip(r).zip(g).zip(w) {
        let xhat = (x - mean) * rstd;
        d.write(rstd * (g * w - mg - xhat * mgx));
    }
}

impl CustomOp1 for FrozenLayerNorm {
    fn name(&self) -> &'static str {
        "frozen-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = *l.dims().last().unwrap_or(&1);
        if self.weight.len() != n || self.bias.len() != n {
            candle_core::bail!(
                "frozen-layer-norm: parameters of {} for rows of {n}",
                self.weight.len()
            )
        }
        let (w, b, eps) = (&self.weight, &self.bias, self.eps);
        last_dim_rows(s, l, |o, r| layer_norm_row(o, r, w, b, eps))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (w, eps) = (&self.weight, self.eps);
        last_dim_row_pairs(arg, grad, |d, r, gr| {
            layer_norm_backward_row(d, r, gr, w, eps)
        })
        .map(Some)
    }
}

/// `LayerNorm(a + b)` with frozen parameters (a residual connection and the norm after it):
/// each row's sum lives in a per-thread scratch row instead of a tensor of its own, so the
/// forward pass reads `a` and `b` once and writes only the output (the addition's full-size
/// write and the norm's read of it are gone, and the sum is not kept for the backward pass,
/// which recomputes it row by row). Both inputs get the same gradient, the LayerNorm's input
/// gradient; the same bits as [`FrozenLayerNorm`] of `a + b`.
pub(crate) struct FrozenAddLayerNorm(pub(crate) FrozenLayerNorm);

/// `f(out_row, a_row + b_row, row_range)` over paired rows of `n` elements in parallel, the
/// sum in a per-thread scratch row (`row_range`: the row's elements, to read other tensors of
/// the same shape).
fn map_summed_rows(
    a: &[f32],
    b: &[f32],
    n: usize,
    f: impl Fn(&mut [MaybeUninit<f32>], &[f32], std::ops::Range<usize>) + Sync + Send,
) -> Result<Vec<f32>> {
    if a.len() != b.len() || n == 0 || !a.len().is_multiple_of(n) {
        candle_core::bail!("add-layer-norm: rows of unequal shapes")
    }
    // SAFETY: the rows of n elements cover the output, and every `f` writes its whole row
    Ok(unsafe {
        fresh(a.len(), |out| {
            out.par_chunks_mut(n)
                .enumerate()
                .with_min_len(MIN_ROWS)
                .for_each_init(
                    || vec![MaybeUninit::<f32>::uninit(); n],
                    |sum, (i, o)| {
                        let rows = i * n..(i + 1) * n;
                        add_row(sum, &a[rows.clone()], &b[rows.clone()]);
                        // SAFETY: `add_row` wrote every element of the scratch row
                        let sum = assume_init(sum);
                        f(o, sum, rows);
                    },
                )
        })
    })
}

impl candle_core::CustomOp2 for FrozenAddLayerNorm {
    fn name(&self) -> &'static str {
        "frozen-add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = *l1.dims().last().unwrap_or(&1);
        let ln = &self.0;
        if l1.dims() != l2.dims() || ln.weight.len() != n || ln.bias.len() != n {
            candle_core::bail!(
                "frozen-add-layer-norm: inputs {:?} and {:?}, parameters of {}",
                l1.dims(),
                l2.dims(),
                ln.weight.len()
            )
        }
        let (a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let (w, bias, eps) = (&ln.weight, &ln.bias, ln.eps);
        let y = map_summed_rows(a, b, n, |o, r, _| layer_norm_row(o, r, w, bias, eps))?;
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = *a.dims().last().unwrap_or(&1);
        let (w, eps) = (&self.0.weight, self.0.eps);
        let d = with_f32(a, |av| {
            with_f32(b, |bv| {
                with_f32(grad, |g| {
                    if g.len() != av.len() {
                        candle_core::bail!("frozen-add-layer-norm: a gradient of another shape")
                    }
                    map_summed_rows(av, bv, n, |d, r, rows| {
                        layer_norm_backward_row(d, r, &g[rows], w, eps)
                    })
                })
            })
        })?;
        let d = Tensor::from_vec(d, a.shape(), a.device())?;
        Ok((Some(d.clone()), Some(d)))
    }
}

/// T5's RMS LayerNorm `y = w · x / sqrt(mean(x²) + eps)` over the last dimension with a
/// frozen `weight`: the backward pass returns only the input gradient
/// `dx = r·(w⊙g) − x·r³·mean(w⊙g⊙x)`, `r = 1/sqrt(mean(x²) + eps)`; row sums in f64. It keeps
/// only `x` alive for the backward pass (the composed form keeps four intermediates).
pub(crate) struct FrozenRmsNorm {
    weight: Arc<Vec<f32>>,
    eps: f64,
}

impl FrozenRmsNorm {
    pub(crate) fn new(weight: &Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Arc::new(host(weight)?),
            eps,
        })
    }
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
#[inline(always)]
fn row_rms_inverse(r: &[f32], eps: f64) -> f32 {
    let ms = lane_sum(r, |v| (v as f64) * (v as f64)) / r.len() as f64;
    (1.0 / (ms + eps).sqrt()) as f32
}

/// `o = w ⊙ r / rms(r)`: one row of the RMS-norm forward pass.
#[multiversion(targets = "simd")]
fn rms_norm_row(o: &mut [MaybeUninit<f32>], r: &[f32], w: &[f32], eps: f64) {
    let inv = row_rms_inverse(r, eps);
    for ((o, &v), &w) in o.iter_mut().zip(r).zip(w) {
        o.write(w * (v * inv));
    }
}

/// One row of the RMS-norm input gradient (see [`FrozenRmsNorm`]).
#[multiversion(targets = "simd")]
fn rms_norm_backward_row(d: &mut [MaybeUninit<f32>], r: &[f32], g: &[f32], w: &[f32], eps: f64) {
    let inv = row_rms_inverse(r, eps);
    let sum_gwx = lane_sum3(g, w, r, |g, w, x| (g * w) as f64 * x as f64);
    let c = (sum_gwx / r.len() as f64) as f32 * inv * inv * inv;
    for (((d, &x), &g), &w) in d.iter_mut().zip(r).zip(g).zip(w) {
        d.write(inv * g * w - x * c);
    }
}

impl CustomOp1 for FrozenRmsNorm {
    fn name(&self) -> &'static str {
        "frozen-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = *l.dims().last().unwrap_or(&1);
        if self.weight.len() != n {
            candle_core::bail!(
                "frozen-rms-norm: a weight of {} for rows of {n}",
                self.weight.len()
            )
        }
        let (w, eps) = (&self.weight, self.eps);
        last_dim_rows(s, l, |o, r| rms_norm_row(o, r, w, eps))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (w, eps) = (&self.weight, self.eps);
        last_dim_row_pairs(arg, grad, |d, r, gr| {
            rms_norm_backward_row(d, r, gr, w, eps)
        })
        .map(Some)
    }
}

/// Inverted dropout: keeps each element with probability `keep` (scaled by `1 / keep`). The
/// keep/drop bits come from ChaCha8 streams seeded once per call (one stream per block of
/// [`CHUNK`] elements), so they do not depend on the thread count; the backward pass applies
/// the same bits.
pub(crate) struct Dropout {
    kept: Arc<Vec<bool>>,
    scale: f32,
}

impl Dropout {
    /// Draw the bits for `n` elements from `seed`.
    pub(crate) fn new(n: usize, keep: f64, seed: [u8; 32]) -> Self {
        // keep an element when a uniform u32 falls below keep · 2³²
        let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        let mut kept = vec![false; n];
        kept.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(block, bits)| {
                let mut rng = ChaCha8Rng::from_seed(seed);
                rng.set_stream(block as u64);
                // the block's words in one bulk fill (the same words, in the same order, as
                // one `random::<u32>()` per element), then a comparison loop that vectorizes
                let mut words = [0u32; CHUNK];
                let words = &mut words[..bits.len()];
                rng.fill(words);
                for (b, &w) in bits.iter_mut().zip(words.iter()) {
                    *b = w < threshold;
                }
            });
        Self {
            kept: Arc::new(kept),
            scale: (1.0 / keep) as f32,
        }
    }

    /// The per-element factors (`1 / keep` or 0), for devices without the fused kernel.
    pub(crate) fn scale_factors(&self) -> Vec<f32> {
        self.kept
            .iter()
            .map(|&k| if k { self.scale } else { 0.0 })
            .collect()
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let scale = self.scale;
        assert_eq!(x.len(), self.kept.len(), "dropout: one flag per element");
        assert_eq!(x.len(), self.kept.len(), "dropout: one flag per element");
        // SAFETY: the chunks cover the output and `dropout_block` writes each whole (`kept`
        // has one flag per element)
        unsafe {
            fresh(x.len(), |out| {
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(self.kept.par_chunks(CHUNK)))
                    .for_each(|(o, (r, k))| dropout_block(o, r, k, scale))
            })
        }
    }
}

/// `o = r · scale` where kept, 0 elsewhere.
#[multiversion(targets = "simd")]
fn dropout_block(o: &mut [MaybeUninit<f32>], r: &[f32], kept: &[bool], scale: f32) {
    for ((o, &v), &k) in o.iter_mut().zip(r).zip(kept) {
        o.write(if k { v * scale } else { 0.0 });
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        if x.len() != self.kept.len() {
            candle_core::bail!("dropout: {} bits for {} elements", self.kept.len(), x.len())
        }
        Ok((CpuStorage::F32(self.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(grad, |g| Ok(self.apply(g)))?;
        Ok(Some(Tensor::from_vec(dx, grad.shape(), grad.device())?))
    }
}

/// The per-step scalars of one AdamW update (see [`adamw_update`]), each the f32 that Candle's
/// scalar ops would use for the composed update's f64 value.
pub(crate) struct AdamWScalars {
    pub(crate) beta1: f32,
    pub(crate) one_minus_beta1: f32,
    pub(crate) beta2: f32,
    pub(crate) one_minus_beta2: f32,
    pub(crate) eps: f32,
    /// `lr / (1 − β₁ᵗ)`
    pub(crate) step_size: f32,
    /// `1 / sqrt(1 − β₂ᵗ)`
    pub(crate) inv_sqrt_bias2: f32,
    /// `1 − lr · weight_decay`, or None without decay
    pub(crate) decay: Option<f32>,
}

/// Runs `f` on the contiguous f32 data of `t` in place, through Candle's in-place op (the
/// write lock of `t`'s storage is held while `f` runs; nested calls lock different storages).
/// Every tensor sharing `t`'s storage sees the change, as with [`candle_core::Var::set`].
pub(crate) fn with_f32_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
    struct InPlace<F>(std::cell::RefCell<Option<F>>);
    impl<F: FnOnce(&mut [f32]) -> Result<()>> candle_core::InplaceOp1 for InPlace<F> {
        fn name(&self) -> &'static str {
            "in-place-f32"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let CpuStorage::F32(data) = storage else {
                candle_core::bail!("in-place op: expected f32")
            };
            let Some((a, b)) = layout.contiguous_offsets() else {
                candle_core::bail!("in-place op: the tensor must be contiguous")
            };
            match self.0.borrow_mut().take() {
                Some(f) => f(&mut data[a..b]),
                None => candle_core::bail!("in-place op: applied twice"),
            }
        }
    }
    t.inplace_op1(&InPlace(std::cell::RefCell::new(Some(f))))
}

/// Whether two tensors are views of one storage (the address of the storage each locks; one
/// lock held at a time).
pub(crate) fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    let address = |t: &Tensor| &*t.storage_and_layout().0 as *const Storage as usize;
    address(a) == address(b)
}

/// One AdamW update of an f32 parameter, in place and in one parallel pass: the parameter
/// `param` and its moments `m`, `v` (three tensors with storages of their own, contiguous,
/// of `grad`'s length) are overwritten with their new values; nothing is allocated. The
/// arithmetic is the composed update's, op for op in f32 (Candle's scalar ops are
/// `x · mul + add`): `m' = m·β₁ + g·(1−β₁)`, `v' = v·β₂ + g²·(1−β₂)`,
/// `p' = p·decay − m' / (sqrt(v')·inv_sqrt_bias2 + eps) · step_size` — so the
/// optimizer-step fixtures and resumed runs see the same values. Replaces about a dozen
/// full-size passes and allocations per tensor, and the copy of `Var::set`.
pub(crate) fn adamw_in_place(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: &AdamWScalars,
) -> Result<()> {
    let all = [param, grad, m, v];
    if (0..4).any(|i| (i + 1..4).any(|j| same_storage(all[i], all[j]))) {
        candle_core::bail!(
            "adamw: the parameter, its gradient and its two moments must not share storage"
        )
    }
    with_f32(grad, |grad| {
        with_f32_mut(param, |param| {
            with_f32_mut(m, |m| {
                with_f32_mut(v, |v| {
                    let n = param.len();
                    if grad.len() != n || m.len() != n || v.len() != n {
                        candle_core::bail!(
                            "adamw: a gradient or moment does not match its parameter of {n}"
                        )
                    }
                    param
                        .par_chunks_mut(CHUNK)
                        .zip(m.par_chunks_mut(CHUNK))
                        .zip(v.par_chunks_mut(CHUNK))
                        .zip(grad.par_chunks(CHUNK))
                        .for_each(|(((p, m), v), g)| adamw_block(p, m, v, g, s));
                    Ok(())
                })
            })
        })
    })
}

#[multiversion(targets = "simd")]
fn adamw_block(param: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], s: &AdamWScalars) {
    let len = param.len();
    let (m, v, grad) = (&mut m[..len], &mut v[..len], &grad[..len]);
    for i in 0..len {
        let g = grad[i];
        let m1 = (m[i] * s.beta1 + 0.0) + (g * s.one_minus_beta1 + 0.0);
        let v1 = (v[i] * s.beta2 + 0.0) + ((g * g) * s.one_minus_beta2 + 0.0);
        let denom = (v1.sqrt() * s.inv_sqrt_bias2 + 0.0) * 1.0 + s.eps;
        let decayed = match s.decay {
            Some(d) => param[i] * d + 0.0,
            None => param[i],
        };
        param[i] = decayed - ((m1 / denom) * s.step_size + 0.0);
        m[i] = m1;
        v[i] = v1;
    }
}

/// `Σ x²` of the f32 data of `t` in f64 (fixed-order partial sums per [`CHUNK`], added in
/// order: the result does not depend on the thread count), without allocating: the gradient
/// norm of [`crate::clip_grad_norm`].
pub(crate) fn sum_of_squares(t: &Tensor) -> Result<f64> {
    with_f32(t, |x| {
        let partial: Vec<f64> = x.par_chunks(CHUNK).map(sum_of_squares_block).collect();
        Ok(partial.iter().sum())
    })
}

#[multiversion(targets = "simd")]
fn sum_of_squares_block(x: &[f32]) -> f64 {
    lane_sum(x, |v| (v as f64) * (v as f64))
}

/// `exp(x)` in f32 (Cephes' `expf`: range reduction by ln 2 and a degree-6 polynomial,
/// within 2 ulp of libm), written with plain arithmetic and bit operations so that loops over
/// it vectorize on any x86-64 (libm's `expf` is a call per element). Exactly 0 below `-87.3`
/// (where libm's results are subnormal or 0: masked attention positions must weigh nothing,
/// or outputs would depend on how much padding a batch has), saturates above `88.7`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const UNDERFLOW: f32 = -87.3;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // adding and subtracting 1.5 · 2²³ rounds to the nearest integer without `roundf`
    const ROUND: f32 = 12_582_912.0;
    let below = x < UNDERFLOW;
    let x = x.clamp(UNDERFLOW, 88.7);
    // ROUND + n lies in [2²³, 2²⁴), where one ulp is 1: its bits are ROUND's plus n, so the
    // integer n comes from an integer subtraction (a float-to-int `as` cast saturates and
    // handles NaN, which compiles to scalar code per lane and kept these loops from
    // vectorizing)
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let y = p * (r * r) + r + 1.0;
    let y = y * f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if below {
        0.0
    } else {
        y
    }
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7, under 6e-7 in f32): the
/// formula of PyTorch's vectorized CPU `erf`, which its GELU uses; vectorizes with [`exp`].
#[inline(always)]
fn erf(x: f32) -> f32 {
    erf_and_gaussian(x).0
}

/// `(erf(x), exp(-x²))`: [`erf`] and the exponential inside it, which the GELU gradient's
/// density term needs too (`φ(v) = exp(-(v/√2)²)/√(2π)`) — one `exp` per element, not two.
#[inline(always)]
fn erf_and_gaussian(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    let a = x.abs();
    let t = 1.0 / (P * a + 1.0);
    let r =
        (((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6;
    let e = exp(-a * a);
    let y = 1.0 - r * t * e;
    (y.copysign(x), e)
}

/// `Φ(v) + v·φ(v)`, the derivative of `v·Φ(v)`, with one `exp` ([`erf_and_gaussian`]).
#[inline(always)]
fn gelu_derivative(v: f32) -> f32 {
    let inv_sqrt_2pi = 1.0 / (2.0 * std::f32::consts::PI).sqrt();
    let (erf, gaussian) = erf_and_gaussian(v * std::f32::consts::FRAC_1_SQRT_2);
    0.5 * (1.0 + erf) + v * gaussian * inv_sqrt_2pi
}

/// `o = x · Φ(x)`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl",
    "x86_64+avx2+fma",
    "x86_64+sse4.2",
    "x86+avx2+fma",
    "x86+sse4.2",
    "x86+sse2",
    "aarch64+neon"
))]
fn gelu_block(o: &mut [MaybeUninit<f32>], x: &[f32]) {
    for (o, &v) in o.iter_mut().zip(x) {
        o.write(0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

/// `d = g · (Φ(x) + x · φ(x))`, the GELU input gradient.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl",
    "x86_64+avx2+fma",
    "x86_64+sse4.2",
    "x86+avx2+fma",
    "x86+sse4.2",
    "x86+sse2",
    "aarch64+neon"
))]
fn gelu_backward_block(d: &mut [MaybeUninit<f32>], x: &[f32], g: &[f32]) {
    for ((d, &v), &g) in d.iter_mut().zip(x).zip(g) {
        d.write(g * gelu_derivative(v));
    }
}

/// `o = v · Φ(v)` for `v = x + b` (a row and its frozen bias).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl",
    "x86_64+avx2+fma",
    "x86_64+sse4.2",
    "x86+avx2+fma",
    "x86+sse4.2",
    "x86+sse2",
    "aarch64+neon"
))]
fn gelu_bias_row(o: &mut [MaybeUninit<f32>], x: &[f32], b: &[f32]) {
    for ((o, &v), &b) in o.iter_mut().zip(x).zip(b) {
        let v = v + b;
        o.write(0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2)));
    }
}

/// [`gelu_backward_block`] at `v = x + b`, one row.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512cd+avx512dq+avx512vl",
    "x86_64+avx2+fma",
    "x86_64+sse4.2",
    "x86+avx2+fma",
    "x86+sse4.2",
    "x86+sse2",
    "aarch64+neon"
))]
fn gelu_bias_backward_row(d: &mut [MaybeUninit<f32>], x: &[f32], g: &[f32], b: &[f32]) {
    for (((d, &v), &g), &b) in d.iter_mut().zip(x).zip(g).zip(b) {
        d.write(g * gelu_derivative(v + b));
    }
}

/// Exact GELU `x·Φ(x)` (Φ through [`erf`]), or `GELU(x + b)` with a frozen bias `b` over the
/// last dimension: the bias of the linear layer before it, added here instead of in a pass of
/// its own (the backward pass reaches `x` only).
pub(crate) struct GeluErf {
    pub bias: Option<Arc<Vec<f32>>>,
}

impl GeluErf {
    /// Plain GELU.
    pub(crate) const PLAIN: GeluErf = GeluErf { bias: None };

    /// `GELU(x + bias)`, `bias` frozen.
    pub(crate) fn with_bias(bias: &Tensor) -> Result<Self> {
        Ok(Self {
            bias: Some(Arc::new(host(bias)?)),
        })
    }

    /// The bias, checked against rows of `n`.
    fn bias_for(&self, n: usize) -> Result<Option<&[f32]>> {
        match &self.bias {
            Some(b) if b.len() != n => {
                candle_core::bail!("gelu-erf: a bias of {} for rows of {n}", b.len())
            }
            Some(b) => Ok(Some(b.as_slice())),
            None => Ok(None),
        }
    }
}

const CHUNK: usize = 4096;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l)?;
        let n = *l.dims().last().unwrap_or(&1);
        if let Some(b) = self.bias_for(n)? {
            let out = map_rows(x, n, |o, r| gelu_bias_row(o, r, b));
            return Ok((CpuStorage::F32(out), l.shape().clone()));
        }
        // SAFETY: the chunks cover the output and `gelu_block` writes each whole
        let out = unsafe {
            fresh(x.len(), |out| {
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .for_each(|(o, r)| gelu_block(o, r))
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(arg, |x| {
            with_f32(grad, |g| {
                if g.len() != x.len() {
                    candle_core::bail!("gelu-erf backward: a gradient of another shape")
                }
                let n = *arg.dims().last().unwrap_or(&1);
                if let Some(b) = self.bias_for(n)? {
                    return Ok(map_row_pairs(x, g, n, |d, r, gr| {
                        gelu_bias_backward_row(d, r, gr, b)
                    }));
                }
                // SAFETY: the chunks cover the output and `gelu_backward_block` writes each
                // whole (`g` has x's length, checked above)
                Ok(unsafe {
                    fresh(x.len(), |dx| {
                        dx.par_chunks_mut(CHUNK)
                            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                            .for_each(|(d, (r, gr))| gelu_backward_block(d, r, gr))
                    })
                })
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// Padding does not change a row's attention probabilities by a single bit: the first 37
    /// entries of a row are the same whether 0 or up to 40 masked positions follow (the
    /// lane sums and the vectorized `exp` see the padding as exact zeros).
    #[test]
    fn attention_probabilities_do_not_depend_on_padding() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let real = 37;
        let row: Vec<f32> = (0..real + 40)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.21)
            .collect();
        let probs = |len: usize| -> candle_core::Result<Vec<f32>> {
            let scores = Tensor::from_vec(row[..len].to_vec(), (1, 1, 1, len), &dev)?;
            let bias: Vec<f32> = (0..len)
                .map(|i| if i < real { 0.0 } else { -1e9 })
                .collect();
            let bias = Tensor::from_vec(bias, (1, 1, 1, len), &dev)?;
            let p = crate::ops::attention_softmax(&scores, 0.125, &bias)?;
            Ok(p.flatten_all()?.to_vec1::<f32>()?[..real].to_vec())
        };
        let unpadded = probs(real)?;
        let total: f32 = unpadded.iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
        for len in real + 1..=real + 40 {
            let padded = probs(len)?;
            assert!(
                padded
                    .iter()
                    .zip(&unpadded)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{len}"
            );
        }
        Ok(())
    }

    #[test]
    fn erf_is_within_its_bound_of_libm() {
        let mut worst = 0f32;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((super::erf(x) - libm_erf(x)).abs());
        }
        assert!(worst < 6e-7, "max |erf - erff| = {worst}");
        assert!(super::erf(0.0).abs() < 1e-7);
        assert_eq!(super::erf(-0.7), -super::erf(0.7));
        assert_eq!(super::erf(f32::INFINITY), 1.0);
        assert_eq!(super::erf(f32::NEG_INFINITY), -1.0);
    }

    /// The bulk-filled dropout bits are those of one `random::<u32>()` per element, block by
    /// block (so masks drawn before the change are drawn again from the same seeds).
    #[test]
    fn dropout_bits_follow_the_per_element_stream() {
        use super::{ChaCha8Rng, CHUNK};
        use rand::{Rng, SeedableRng};
        let seed = crate::rng::PetlRng::seed(21).seed_bytes();
        for n in [1, 5, CHUNK - 1, CHUNK, 2 * CHUNK + 37] {
            let keep = 0.9;
            let threshold = (keep * 4_294_967_296.0) as u32;
            let ours = super::Dropout::new(n, keep, seed);
            let mut want = Vec::with_capacity(n);
            for block in 0..n.div_ceil(CHUNK) {
                let mut rng = ChaCha8Rng::from_seed(seed);
                rng.set_stream(block as u64);
                for _ in 0..CHUNK.min(n - block * CHUNK) {
                    want.push(rng.random::<u32>() < threshold);
                }
            }
            assert_eq!(*ours.kept, want, "n = {n}");
        }
    }

    #[test]
    fn gelu_derivative_matches_the_libm_formula() {
        // Φ(v) + v·φ(v) with libm's erf and exp in f64
        let mut worst = 0f64;
        for i in -12_000..=12_000 {
            let v = i as f32 * 1e-3;
            let x = v as f64;
            let want = 0.5 * (1.0 + libm_erf(v * std::f32::consts::FRAC_1_SQRT_2) as f64)
                + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst = worst.max((super::gelu_derivative(v) as f64 - want).abs());
        }
        assert!(worst < 2e-6, "max |GELU' - reference| = {worst}");
        assert_eq!(super::gelu_derivative(0.0), 0.5);
        assert_eq!(super::gelu_derivative(-50.0), 0.0);
        assert_eq!(super::gelu_derivative(50.0), 1.0);
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in -873_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (ours, libm) = (super::exp(x), x.exp());
            worst = worst.max((ours - libm).abs() / libm);
        }
        assert!(worst < 2.5e-7, "max relative error {worst}");
        assert_eq!(super::exp(0.0), 1.0);
        assert_eq!(super::exp(-1e9), 0.0);
        assert_eq!(super::exp(-87.4), 0.0);
    }

    fn libm_erf(x: f32) -> f32 {
        candle_core::cpu::erf::erf_f32(x)
    }
}
