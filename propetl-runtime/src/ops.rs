//! Differentiable building blocks.
//!
//! Candle 0.11's fused `candle_nn::ops::softmax_last_dim`, `candle_nn::ops::layer_norm` and
//! `candle_nn::LayerNorm::forward` have no backward pass: gradients silently stop there. Every
//! op here is composed of primitive tensor ops that Candle can differentiate.

use candle_core::{DType, Result, Tensor, D};

use crate::fused::HeadView;
use crate::spec::Activation;

/// Softmax over the last dimension (max-subtracted for stability), with a backward pass.
/// On the CPU in f32 this is one fused kernel; elsewhere the composed formulation.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(x) {
        return x.contiguous()?.apply_op1(crate::fused::Softmax);
    }
    softmax_composed(x)
}

/// Softmax composed of primitive ops (reference formulation of [`softmax_last_dim`]).
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Log-softmax over the last dimension (one fused pass each way on the CPU in f32).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(x) && x.dim(D::Minus1)? > 0 {
        return x.contiguous()?.apply_op1(crate::fused::LogSoftmax);
    }
    log_softmax_composed(x)
}

/// Log-softmax composed of primitive ops (reference formulation of [`log_softmax_last_dim`]).
pub fn log_softmax_composed(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · w + b` (biased variance).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// LayerNorm whose `weight` and `bias` are frozen: gradients flow to `x` only (the
/// composed, differentiable [`layer_norm`] over detached parameters).
/// On the CPU in f32 this is one fused kernel (forward and backward).
pub fn frozen_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::fused::applies(x) && crate::fused::applies(weight) && crate::fused::applies(bias) {
        let op = crate::fused::FrozenLayerNorm::new(weight, bias, eps)?;
        return x.contiguous()?.apply_op1(op);
    }
    layer_norm(x, &weight.detach(), &bias.detach(), eps)
}

/// [`frozen_layer_norm`] of `x + residual` (a residual connection and the LayerNorm after it)
/// as one op on the CPU in f32: the sum is never materialized (see
/// `fused::FrozenAddLayerNorm`); both inputs get the norm's input gradient. Composed
/// elsewhere.
pub fn frozen_add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let on_cpu = [x, residual, weight, bias]
        .iter()
        .all(|t| crate::fused::applies(t));
    if on_cpu && x.dims() == residual.dims() {
        let op = crate::fused::FrozenAddLayerNorm(crate::fused::FrozenLayerNorm::new(
            weight, bias, eps,
        )?);
        return x.contiguous()?.apply_op2(&residual.contiguous()?, op);
    }
    frozen_layer_norm(&x.add(residual)?, weight, bias, eps)
}

/// Attention probabilities `softmax(scale · scores + bias)` over the last dimension, for
/// `scores [B, H, S, K]` and a frozen additive `bias` that broadcasts to it (a padding mask
/// `[B, 1, 1, K]`, T5's position bias `[1, H, S, K]`, or their sum). Gradients reach
/// `scores` only. On the CPU in f32 this is one fused kernel.
pub fn attention_softmax(scores: &Tensor, scale: f64, bias: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(scores) {
        if let Some(op) = crate::fused::AttentionSoftmax::new(scores, scale as f32, bias)? {
            return scores.contiguous()?.apply_op1(op);
        }
    }
    let scaled = if scale == 1.0 {
        scores.clone()
    } else {
        (scores * scale)?
    };
    softmax_composed(&scaled.broadcast_add(&bias.detach())?)
}

/// Attention's per-head product `a [B, H, M, K] · b [B, H, K, N] → [B, H, M, N]`. The operands
/// may be strided views (per-head splits, transposes, a broadcast batch) — no contiguous
/// copies are needed. On the CPU in f32 the (batch, head) products run in parallel, one
/// single-threaded gemm each; elsewhere Candle's matmul.
pub fn head_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(a) && crate::fused::applies(b) && a.rank() == 4 && b.rank() == 4 {
        return a.apply_op2(
            b,
            crate::fused::HeadMatmul {
                a: HeadView::AS_IS,
                b: HeadView::AS_IS,
                merge_heads: false,
            },
        );
    }
    a.contiguous()?.matmul(&b.contiguous()?)
}

/// Attention scores `Q·Kᵀ [B, H, S, T]` of the projections `queries [B, S, H·d]` and
/// `keys [B, T, H·d]` (unscaled). On the CPU in f32 one op splits the heads and transposes
/// the keys inside ([`head_matmul`]'s kernel): no per-head copies forward or backward, and
/// each gradient comes back as `[B, S, H·d]`.
pub fn attention_scores(queries: &Tensor, keys: &Tensor, heads: usize) -> Result<Tensor> {
    if crate::fused::applies(queries) && crate::fused::applies(keys) {
        return queries.apply_op2(
            keys,
            crate::fused::HeadMatmul {
                a: HeadView::split(heads),
                b: HeadView::split(heads).t(),
                merge_heads: false,
            },
        );
    }
    head_matmul(
        &split_heads(queries, heads)?,
        &split_heads(keys, heads)?.transpose(2, 3)?,
    )
}

/// `[B, S, H·d]` → the strided view `[B, H, S, d]` (the composed attention path).
fn split_heads(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, s, hd) = t.dims3()?;
    t.reshape((b, s, heads, hd / heads))?.transpose(1, 2)
}

/// Attention context `P·V` with the heads merged back, `[B, S, H·d]`, of `probs [B, H, S, T]`
/// and the value projection `values [B, T, H·d]` — the layout the output projection reads,
/// written directly (no transpose copy) on the CPU in f32.
pub fn attention_context(probs: &Tensor, values: &Tensor) -> Result<Tensor> {
    let heads = probs.dim(1)?;
    if crate::fused::applies(probs) && crate::fused::applies(values) {
        return probs.apply_op2(
            values,
            crate::fused::HeadMatmul {
                a: HeadView::AS_IS,
                b: HeadView::split(heads),
                merge_heads: true,
            },
        );
    }
    let ctx = head_matmul(probs, &split_heads(values, heads)?)?;
    let (b, _, s, d) = ctx.dims4()?;
    ctx.transpose(1, 2)?.reshape((b, s, heads * d))
}

/// T5's RMS LayerNorm (no mean subtraction, no bias).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)
}

/// T5's RMS LayerNorm with a **frozen** `weight`: gradients flow to `x` only (the composed
/// [`rms_norm`] over a detached weight). On the CPU in f32 this is one fused kernel (forward
/// and backward) that keeps only `x` for the backward pass.
pub fn frozen_rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::fused::applies(x) && crate::fused::applies(weight) {
        let op = crate::fused::FrozenRmsNorm::new(weight, eps)?;
        return x.contiguous()?.apply_op1(op);
    }
    rms_norm(x, &weight.detach(), eps)
}

/// `x Wᵀ + b` for `x` of any rank ≥ 2 (`W` is `[out, in]`, PyTorch layout). On the CPU in f32
/// the product is one op whose backward writes `dW = gᵀ x` in `W`'s own layout (Candle's
/// matmul rule yields the gradient of `Wᵀ`, which the transpose rule hands back as a strided
/// view and the gradient store then copies, transposing, into a fresh buffer — 9.4M elements
/// per step for the unshared prefix MLP) and skips the gradient of an operand that tracks no
/// variable.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?;
    let y = if crate::fused::applies(x) && crate::fused::applies(weight) && weight.rank() == 2 {
        x2.contiguous()?
            .apply_op2(&weight.contiguous()?, TrainableLinear)?
    } else {
        x2.matmul(&weight.t()?)?
    };
    let y = match bias {
        Some(b) if crate::fused::applies(&y) && crate::fused::applies(b) && b.rank() == 1 => {
            y.apply_op2(&b.contiguous()?, crate::fused::BiasAdd)?
        }
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = weight.dim(0)?;
    y.reshape(out_dims)
}

/// `x [m, k] · W [n, k]ᵀ` with gradients for both (see [`linear`]).
struct TrainableLinear;

impl candle_core::CustomOp2 for TrainableLinear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use crate::fused::{f32_slice, gemm_rows};
        let (m, k) = l1.shape().dims2()?;
        let (n, w_in) = l2.shape().dims2()?;
        if w_in != k {
            candle_core::bail!("linear: x [{m}, {k}] and W [{n}, {w_in}] do not multiply")
        }
        let (x, w) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let y = gemm_rows(m, n, k, x, (1, k), w, (k, 1), None)?;
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((m, n)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use crate::fused::{gemm_into, with_f32};
        let (m, n) = grad.dims2()?;
        let k = w.dim(1)?;
        let dev = grad.device();
        with_f32(grad, |g| {
            let dx = if x.track_op() {
                Some(linear_input_gradient(grad, w)?)
            } else {
                None
            };
            let dw = if w.track_op() {
                // dW = gᵀ x [n, k], row-major like W
                let mut dw = vec![0f32; n * k];
                with_f32(x, |xs| {
                    gemm_into(&mut dw, (n, k, m), g, (n, 1), xs, (1, k), false, 1.0)
                })?;
                Some(Tensor::from_vec(dw, (n, k), dev)?)
            } else {
                None
            };
            Ok((dx, dw))
        })
    }
}

/// `[prefix; x]` for every sequence: `prefix [P, H]` (prefix-tuning's keys or values, one for
/// the whole batch) in front of `x [B, S, H]`, giving `[B, P + S, H]`; gradients reach both.
pub fn prefix_cat(prefix: &Tensor, x: &Tensor) -> Result<Tensor> {
    if crate::fused::applies(prefix) && crate::fused::applies(x) {
        return prefix
            .contiguous()?
            .apply_op2(&x.contiguous()?, crate::fused::PrefixCat);
    }
    let (b, _, h) = x.dims3()?;
    let p = prefix.dim(0)?;
    Tensor::cat(&[&prefix.unsqueeze(0)?.broadcast_as((b, p, h))?, x], 1)
}

/// [`linear`], or [`frozen_linear`] when neither `weight` nor `bias` tracks a variable (a PETL
/// module of a materialized state at inference: one gemm with the bias written first, no
/// zero fill, no bias pass).
pub fn linear_or_frozen(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if weight.track_op() || bias.is_some_and(|b| b.track_op()) {
        linear(x, weight, bias)
    } else {
        frozen_linear(x, weight, bias)
    }
}

/// `x Wᵀ + b` where `W` and `b` are **frozen** (plain tensors): the backward pass computes
/// only the input gradient `g·W`. Candle's generic matmul backward also computes the weight
/// gradient `xᵀ·g` even for tensors that are not variables, a third of a frozen backbone's
/// training FLOPs spent on nothing; this op skips it. Falls back to [`linear`] off the CPU or
/// for non-f32 tensors.
pub fn frozen_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return linear(x, weight, bias);
    }
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?.contiguous()?;
    let op = FrozenLinear {
        weight: weight.detach(),
        bias: bias.map(|b| b.detach()),
    };
    let y = x2.apply_op1_arc(std::sync::Arc::new(Box::new(op)))?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = weight.dim(0)?;
    y.reshape(out_dims)
}

struct FrozenLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        // y [m, n] = x [m, k] · Wᵀ (W is [n, k], row-major) + b, in one gemm call
        let (m, k) = layout.shape().dims2()?;
        let n = self.weight.dim(0)?;
        let x = crate::fused::f32_slice(storage, layout)?;
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        let y = crate::fused::with_f32(&self.weight, |w| {
            crate::fused::gemm_rows(m, n, k, x, (1, k), w, (k, 1), bias.as_deref())
        })?;
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((m, n)),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        linear_input_gradient(grad, &self.weight).map(Some)
    }
}

/// The input gradient of `x Wᵀ`: `dx [m, k] = g [m, n] · W [n, k]`, one gemm (shared by the
/// frozen and the trainable product).
fn linear_input_gradient(grad: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (m, n) = grad.dims2()?;
    let k = weight.dim(1)?;
    let dx = crate::fused::with_f32(grad, |g| {
        crate::fused::with_f32(weight, |w| {
            crate::fused::gemm_rows(m, k, n, g, (1, n), w, (1, k), None)
        })
    })?;
    Tensor::from_vec(dx, (m, k), grad.device())
}

/// `act(x + bias)` for a **frozen** `bias` over the last dimension (the output of a linear
/// layer computed without its bias): the exact GELU adds the bias inside its fused kernel,
/// one pass instead of two; other activations (or a trainable bias) add it first.
pub fn activate_with_bias(x: &Tensor, bias: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    match bias {
        Some(b)
            if act == Activation::Gelu
                && crate::fused::applies(x)
                && crate::fused::applies(b)
                && !b.is_variable()
                && b.rank() == 1 =>
        {
            x.contiguous()?
                .apply_op1(crate::fused::GeluErf::with_bias(b)?)
        }
        Some(b) => activate(&x.broadcast_add(b)?, act),
        None => activate(x, act),
    }
}

/// `x Wᵀ + b + scale · (x Aᵀ) Bᵀ`: a frozen linear layer (`W [out, in]`, `b`) with a LoRA
/// pair (`A [r, in]`, `B [out, r]`, trainable or masked) as one op. The low-rank product is
/// accumulated onto the layer's output by the gemm itself and, backward, `scale·(g B) A` onto
/// the input gradient `g W`: no separate scale, add or gradient-accumulation passes, no
/// transposed copies, and `x Aᵀ` is recomputed rather than kept. Gradients reach `x`, `A` and
/// `B` (none for `W`, `b`). Composed formulation off the CPU or for non-f32 tensors.
pub fn frozen_linear_lora(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    frozen_linear_lora_blocks(x, weight, bias, &[LoraBlock { at: 0, a, b }], scale)
}

/// A LoRA pair on the output columns `at .. at + B.rows` of a (stacked) frozen projection.
#[derive(Debug, Clone, Copy)]
pub struct LoraBlock<'a> {
    /// The first output column the pair updates.
    pub at: usize,
    /// `A [r, in]`.
    pub a: &'a Tensor,
    /// `B [width, r]`.
    pub b: &'a Tensor,
}

/// [`frozen_linear_lora`] for several LoRA pairs on disjoint column blocks of one frozen
/// projection — the query and value pairs of a stacked `[query; key; value]` layer: one gemm
/// for the stacked product, one for every `x Aᵢᵀ` together, one per block for its update, and
/// backward the input gradient `g W + scale · Σᵢ (g Bᵢ) Aᵢ` as two products. Every pair has the
/// same rank and `scale`.
pub fn frozen_linear_lora_blocks(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    blocks: &[LoraBlock],
    scale: f64,
) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let (out, w_in) = weight.dims2()?;
    let rank = blocks.first().map(|p| p.a.dim(0)).transpose()?.unwrap_or(0);
    let mut end = 0;
    for p in blocks {
        let ((r, a_in), (width, b_r)) = (p.a.dims2()?, p.b.dims2()?);
        if w_in != in_dim
            || a_in != in_dim
            || b_r != r
            || r != rank
            || p.at < end
            || p.at + width > out
        {
            candle_core::bail!(
                "frozen_linear_lora: x {:?}, W {:?}, A {:?}, B {:?} at column {} do not compose",
                dims,
                weight.dims(),
                p.a.dims(),
                p.b.dims(),
                p.at
            )
        }
        end = p.at + width;
    }
    if blocks.is_empty() {
        return frozen_linear(x, weight, bias);
    }
    let on_cpu = [x, weight].iter().all(|t| crate::fused::applies(t))
        && blocks
            .iter()
            .all(|p| crate::fused::applies(p.a) && crate::fused::applies(p.b));
    if !on_cpu {
        // composed: each block's update padded with zeros to the full width
        let mut y = frozen_linear(x, weight, bias)?;
        for p in blocks {
            let delta = (linear(&linear(x, p.a, None)?, p.b, None)? * scale)?;
            let width = p.b.dim(0)?;
            let last = delta.rank() - 1;
            let delta = delta.pad_with_zeros(last, p.at, out - p.at - width)?;
            y = y.add(&delta)?;
        }
        return Ok(y);
    }
    let cat = |ts: Vec<&Tensor>| -> Result<Tensor> {
        match ts.as_slice() {
            [one] => one.contiguous(),
            many => Tensor::cat(many, 0)?.contiguous(),
        }
    };
    let a_all = cat(blocks.iter().map(|p| p.a).collect())?;
    let b_all = cat(blocks.iter().map(|p| p.b).collect())?;
    let x2 = x.reshape((rows, in_dim))?.contiguous()?;
    let op = FrozenLinearLora {
        weight: weight.detach(),
        bias: bias.map(|b| b.detach()),
        scale: scale as f32,
        blocks: blocks
            .iter()
            .map(|p| Ok((p.at, p.b.dim(0)?)))
            .collect::<Result<_>>()?,
    };
    let y = x2.apply_op3_arc(&a_all, &b_all, std::sync::Arc::new(Box::new(op)))?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = out;
    y.reshape(out_dims)
}

/// `x Wᵀ + b` plus, for block `i` at columns `(at, width)`, `scale · (x Aᵢᵀ) Bᵢᵀ`; the op's
/// `A` operand is every `Aᵢ` stacked (`[n·r, in]`), its `B` every `Bᵢ` (`[Σ width, r]`).
struct FrozenLinearLora {
    weight: Tensor,
    bias: Option<Tensor>,
    scale: f32,
    blocks: Vec<(usize, usize)>,
}

impl FrozenLinearLora {
    /// Each block with its output columns `(at, width)`, its columns of `x Aᵀ` / rows of `A`
    /// (from `r·i`) and its first row of `B`.
    fn parts(&self, r: usize) -> impl Iterator<Item = ((usize, usize), usize, usize)> + '_ {
        let mut b_row = 0;
        self.blocks
            .iter()
            .enumerate()
            .map(move |(i, &(at, width))| {
                let part = ((at, width), r * i, b_row);
                b_row += width;
                part
            })
    }
}

impl candle_core::CustomOp3 for FrozenLinearLora {
    fn name(&self) -> &'static str {
        "frozen-linear-lora"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use crate::fused::{f32_slice, gemm_into_columns, gemm_rows, with_f32};
        let (x, a, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (m, k) = l1.shape().dims2()?;
        let (ra, _) = l2.shape().dims2()?;
        let r = ra / self.blocks.len();
        let n = self.weight.dim(0)?;
        let bias = match &self.bias {
            Some(b) => Some(b.to_vec1::<f32>()?),
            None => None,
        };
        // y = x Wᵀ + b
        let mut y = with_f32(&self.weight, |w| {
            gemm_rows(m, n, k, x, (1, k), w, (k, 1), bias.as_deref())
        })?;
        // xa = x Aᵀ [m, n·r] for every pair; block i: y[:, at..at+width] += scale · xaᵢ Bᵢᵀ
        let xa = gemm_rows(m, ra, k, x, (1, k), a, (k, 1), None)?;
        for ((at, width), xa_at, b_row) in self.parts(r) {
            gemm_into_columns(
                &mut y,
                (n, at),
                (m, width, r),
                &xa[xa_at..],
                (1, ra),
                &b[b_row * r..],
                (r, 1),
                true,
                self.scale,
            )?;
        }
        Ok((
            candle_core::CpuStorage::F32(y),
            candle_core::Shape::from((m, n)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use crate::fused::{gemm_into, gemm_into_columns, gemm_rows, with_f32};
        let (m, n) = grad.dims2()?;
        let (ra, k) = a.dims2()?;
        let r = ra / self.blocks.len();
        let s = self.scale;
        let dev = grad.device();
        with_f32(grad, |g| {
            with_f32(x, |xs| {
                with_f32(a, |av| {
                    with_f32(b, |bv| {
                        // gb = [g_i B_i]_i [m, n·r] (g_i: block i's columns of g), needed by
                        // dx and dA only
                        let gb = if x.track_op() || a.track_op() {
                            let mut gb = vec![0f32; m * ra];
                            for ((at, width), gb_at, b_row) in self.parts(r) {
                                gemm_into_columns(
                                    &mut gb,
                                    (ra, gb_at),
                                    (m, r, width),
                                    &g[at..],
                                    (1, n),
                                    &bv[b_row * r..],
                                    (1, r),
                                    false,
                                    1.0,
                                )?;
                            }
                            gb
                        } else {
                            Vec::new()
                        };
                        let dx = if x.track_op() {
                            // dx = g W + scale · gb A
                            let mut dx = with_f32(&self.weight, |w| {
                                gemm_rows(m, k, n, g, (1, n), w, (1, k), None)
                            })?;
                            gemm_into(&mut dx, (m, k, ra), &gb, (1, ra), av, (1, k), true, s)?;
                            Some(Tensor::from_vec(dx, (m, k), dev)?)
                        } else {
                            None
                        };
                        let da = if a.track_op() {
                            // dA = scale · gbᵀ x [n·r, k]
                            let mut da = vec![0f32; ra * k];
                            gemm_into(&mut da, (ra, k, m), &gb, (ra, 1), xs, (1, k), false, s)?;
                            Some(Tensor::from_vec(da, (ra, k), dev)?)
                        } else {
                            None
                        };
                        let db = if b.track_op() {
                            // dB_i = scale · g_iᵀ (x A_iᵀ) [width, r]
                            let xa = gemm_rows(m, ra, k, xs, (1, k), av, (k, 1), None)?;
                            let rows_b = b.dim(0)?;
                            let mut db = vec![0f32; rows_b * r];
                            for ((at, width), xa_at, b_row) in self.parts(r) {
                                gemm_into(
                                    &mut db[b_row * r..(b_row + width) * r],
                                    (width, r, m),
                                    &g[at..],
                                    (n, 1),
                                    &xa[xa_at..],
                                    (1, ra),
                                    false,
                                    s,
                                )?;
                            }
                            Some(Tensor::from_vec(db, (rows_b, r), dev)?)
                        } else {
                            None
                        };
                        Ok((dx, da, db))
                    })
                })
            })
        })
    }
}

/// Apply an activation.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Relu => x.relu(),
        Activation::GeluNew => x.gelu(),
        Activation::Gelu if crate::fused::applies(x) => {
            x.contiguous()?.apply_op1(crate::fused::GeluErf::PLAIN)
        }
        Activation::Gelu => x.gelu_erf(),
    }
}

/// Mean cross-entropy of `logits [N, C]` against integer `labels [N]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last_dim(logits)?;
    let labels = labels.to_dtype(DType::U32)?.unsqueeze(1)?;
    let picked = logp.gather(&labels, 1)?;
    picked.neg()?.mean_all()
}

/// Mean squared error between `pred [N]` and `target [N]`.
pub fn mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    pred.sub(target)?.sqr()?.mean_all()
}

/// Inverted dropout; identity when `p == 0`. The keep/drop bits come from one seed drawn
/// from the caller's RNG (so a run is reproducible from its seed, on any thread count and
/// device); on the CPU in f32 the op is one fused parallel kernel.
pub fn dropout(x: &Tensor, p: f64, rng: &mut crate::rng::PetlRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let op = crate::fused::Dropout::new(x.elem_count(), keep, rng.seed_bytes());
    if crate::fused::applies(x) {
        return x.contiguous()?.apply_op1(op);
    }
    let mask = Tensor::from_vec(op.scale_factors(), x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The largest absolute elementwise difference.
    fn max_abs(p: &Tensor, q: &Tensor) -> Result<f32> {
        p.sub(q)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    /// The largest difference between two backward passes' gradients of `vars` (each must
    /// have one in both, contiguous in the first).
    fn max_grad_diff<'a>(
        ours: &candle_core::backprop::GradStore,
        reference: &candle_core::backprop::GradStore,
        vars: impl IntoIterator<Item = &'a Var>,
    ) -> Result<f32> {
        let mut worst = 0f32;
        for v in vars {
            let (p, q) = (
                ours.get(v.as_tensor()).expect("a gradient"),
                reference.get(v.as_tensor()).expect("a gradient"),
            );
            assert!(p.is_contiguous(), "{:?}", v.dims());
            worst = worst.max(max_abs(p, q)?);
        }
        Ok(worst)
    }

    #[test]
    fn softmax_and_layer_norm_pass_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![0.1f32, -0.4, 2.0, 0.7, 1.1, -1.3], (2, 3), &dev)?;
        let w = Var::from_vec(vec![1.1f32, 0.9, 1.0], 3, &dev)?;
        let b = Var::from_vec(vec![0.1f32, 0.0, -0.2], 3, &dev)?;
        let target = Tensor::new(&[[1f32, 2., 3.], [3., 2., 1.]], &dev)?;
        let y = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
        let loss = softmax_last_dim(&y)?.mul(&target)?.sum_all()?;
        let grads = loss.backward()?;
        for v in [&x, &w, &b] {
            let g = grads.get(v.as_tensor()).expect("gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }

    #[test]
    fn layer_norm_matches_candle_forward() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[0.3f32, -1.0, 2.5, 0.0]], &dev)?;
        let w = Tensor::new(&[1.0f32, 2.0, 0.5, 1.0], &dev)?;
        let b = Tensor::new(&[0.0f32, 0.1, 0.2, 0.3], &dev)?;
        let ours = layer_norm(&x, &w, &b, 1e-5)?;
        let theirs = candle_nn::ops::layer_norm(&x, &w, &b, 1e-5)?;
        let diff = ours.sub(&theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn frozen_linear_matches_linear_and_only_passes_input_grads() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(3);
        let x = Var::from_tensor(&rng.normal((2, 3, 5), 1.0, &dev)?)?;
        let w = rng.normal((4, 5), 1.0, &dev)?;
        let b = rng.normal(4, 1.0, &dev)?;
        let t = rng.normal((2, 3, 4), 1.0, &dev)?;
        let ours = frozen_linear(x.as_tensor(), &w, Some(&b))?;
        let plain = linear(x.as_tensor(), &w, Some(&b))?;
        let d = ours.sub(&plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        let g1 = ours.mul(&t)?.sum_all()?.backward()?;
        let g2 = plain.mul(&t)?.sum_all()?.backward()?;
        let gx1 = g1.get(x.as_tensor()).expect("grad");
        let gx2 = g2.get(x.as_tensor()).expect("grad");
        assert!(gx1.sub(gx2)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        // no gradient is computed for the frozen weight and bias
        assert!(g1.get(&w).is_none() && g1.get(&b).is_none());
        Ok(())
    }

    #[test]
    fn activation_with_a_frozen_bias_matches_adding_it_first() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(8);
        let x = Var::from_tensor(&rng.normal((3, 4, 6), 2.0, &dev)?)?;
        let bias = rng.normal(6, 1.0, &dev)?;
        let t = rng.normal((3, 4, 6), 1.0, &dev)?;
        for act in [Activation::Gelu, Activation::Relu, Activation::GeluNew] {
            let fused = activate_with_bias(x.as_tensor(), Some(&bias), act)?;
            let composed = activate(&x.as_tensor().broadcast_add(&bias)?, act)?;
            let d = fused.sub(&composed)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-6, "{act:?}: {d}");
            let g1 = fused.mul(&t)?.sum_all()?.backward()?;
            let g2 = composed.mul(&t)?.sum_all()?.backward()?;
            let (a, b) = (
                g1.get(x.as_tensor()).expect("grad"),
                g2.get(x.as_tensor()).expect("grad"),
            );
            assert!(
                a.sub(b)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-6,
                "{act:?}"
            );
            assert!(g1.get(&bias).is_none());
        }
        // a bias of the wrong width is an error
        let wrong = rng.normal(5, 1.0, &dev)?;
        assert!(activate_with_bias(x.as_tensor(), Some(&wrong), Activation::Gelu).is_err());
        Ok(())
    }

    #[test]
    fn frozen_linear_lora_matches_the_composed_update_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(9);
        let (rows, inp, out, r) = (7, 6, 5, 3);
        let x = Var::from_tensor(&rng.normal((1, rows, inp), 1.0, &dev)?)?;
        let w = rng.normal((out, inp), 0.5, &dev)?;
        let bias = rng.normal(out, 0.5, &dev)?;
        let a = Var::from_tensor(&rng.normal((r, inp), 0.5, &dev)?)?;
        let b = Var::from_tensor(&rng.normal((out, r), 0.5, &dev)?)?;
        let t = rng.normal((1, rows, out), 1.0, &dev)?;
        let scale = 1.5;
        let fused = frozen_linear_lora(
            x.as_tensor(),
            &w,
            Some(&bias),
            a.as_tensor(),
            b.as_tensor(),
            scale,
        )?;
        let low_rank = linear(
            &linear(x.as_tensor(), a.as_tensor(), None)?,
            b.as_tensor(),
            None,
        )?;
        let composed = linear(x.as_tensor(), &w, Some(&bias))?.add(&(low_rank * scale)?)?;
        assert_eq!(fused.dims(), &[1, rows, out]);
        assert!(max_abs(&fused, &composed)? < 1e-5);
        let g1 = fused.mul(&t)?.sum_all()?.backward()?;
        let g2 = composed.mul(&t)?.sum_all()?.backward()?;
        assert!(max_grad_diff(&g1, &g2, [&x, &a, &b])? < 1e-4);
        assert!(g1.get(&w).is_none() && g1.get(&bias).is_none());
        // an input that needs no gradient gets none (the first layer's input)
        let frozen_x = x.as_tensor().detach();
        let y = frozen_linear_lora(&frozen_x, &w, None, a.as_tensor(), b.as_tensor(), scale)?;
        let g3 = y.sum_all()?.backward()?;
        assert!(g3.get(&frozen_x).is_none() && g3.get(a.as_tensor()).is_some());
        // a pair that does not compose with the layer is an error
        assert!(
            frozen_linear_lora(x.as_tensor(), &w, None, b.as_tensor(), a.as_tensor(), scale)
                .is_err()
        );
        Ok(())
    }

    /// Two pairs on column blocks of one stacked projection (a query block at 0 and a value
    /// block after an untouched key block), against the composed form with each update padded
    /// to the full width: values and the gradients of x, both A and both B.
    #[test]
    fn frozen_linear_lora_blocks_match_the_padded_updates_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(14);
        let (rows, inp, width, r) = (9, 6, 4, 3);
        let out = 3 * width;
        let x = Var::from_tensor(&rng.normal((1, rows, inp), 1.0, &dev)?)?;
        let w = rng.normal((out, inp), 0.5, &dev)?;
        let bias = rng.normal(out, 0.5, &dev)?;
        let vars: Vec<Var> = [(r, inp), (width, r), (r, inp), (width, r)]
            .into_iter()
            .map(|shape| Var::from_tensor(&rng.normal(shape, 0.5, &dev)?))
            .collect::<Result<_>>()?;
        let [aq, bq, av, bv] = [0, 1, 2, 3].map(|i| vars[i].as_tensor());
        let t = rng.normal((1, rows, out), 1.0, &dev)?;
        let scale = 1.5;
        let blocks = [
            LoraBlock {
                at: 0,
                a: aq,
                b: bq,
            },
            LoraBlock {
                at: 2 * width,
                a: av,
                b: bv,
            },
        ];
        let fused = frozen_linear_lora_blocks(x.as_tensor(), &w, Some(&bias), &blocks, scale)?;
        let update = |a: &Tensor, b: &Tensor, at: usize| -> Result<Tensor> {
            (linear(&linear(x.as_tensor(), a, None)?, b, None)? * scale)?.pad_with_zeros(
                2,
                at,
                out - at - width,
            )
        };
        let composed = linear(x.as_tensor(), &w, Some(&bias))?
            .add(&update(aq, bq, 0)?)?
            .add(&update(av, bv, 2 * width)?)?;
        assert_eq!(fused.dims(), &[1, rows, out]);
        assert!(max_abs(&fused, &composed)? < 1e-5);
        let g1 = fused.mul(&t)?.sum_all()?.backward()?;
        let g2 = composed.mul(&t)?.sum_all()?.backward()?;
        assert!(max_grad_diff(&g1, &g2, std::iter::once(&x).chain(&vars))? < 1e-4);
        // overlapping or out-of-range blocks, or pairs of different ranks, are errors
        let overlapping = [blocks[0], LoraBlock { at: 2, ..blocks[1] }];
        assert!(frozen_linear_lora_blocks(x.as_tensor(), &w, None, &overlapping, scale).is_err());
        let beyond = [LoraBlock {
            at: out - 2,
            ..blocks[1]
        }];
        assert!(frozen_linear_lora_blocks(x.as_tensor(), &w, None, &beyond, scale).is_err());
        let a2 = rng.normal((r + 1, inp), 0.5, &dev)?;
        let b2 = rng.normal((width, r + 1), 0.5, &dev)?;
        let mixed = [
            blocks[0],
            LoraBlock {
                at: 2 * width,
                a: &a2,
                b: &b2,
            },
        ];
        assert!(frozen_linear_lora_blocks(x.as_tensor(), &w, None, &mixed, scale).is_err());
        Ok(())
    }

    #[test]
    fn fused_log_softmax_matches_the_composed_one_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(10);
        // rows longer than a lane block, with a tail, and large logits
        let x = Var::from_tensor(&(rng.normal((5, 1003), 4.0, &dev)? + 30.0)?)?;
        let t = rng.normal((5, 1003), 1.0, &dev)?;
        let fused = log_softmax_last_dim(x.as_tensor())?;
        let composed = log_softmax_composed(x.as_tensor())?;
        assert!(max_abs(&fused, &composed)? < 1e-4);
        let g1 = fused.mul(&t)?.sum_all()?.backward()?;
        let g2 = composed.mul(&t)?.sum_all()?.backward()?;
        let (p, q) = (
            g1.get(x.as_tensor()).expect("grad"),
            g2.get(x.as_tensor()).expect("grad"),
        );
        assert!(max_abs(p, q)? < 1e-4);
        Ok(())
    }

    /// The vendored backward pass (vendor/README.md) skips the gradient of a matrix
    /// product's operand that tracks no variable, and still computes the other one.
    #[test]
    fn matmul_backward_skips_frozen_operands() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(11);
        let x = Var::from_tensor(&rng.normal((4, 3), 1.0, &dev)?)?;
        let w = rng.normal((5, 3), 1.0, &dev)?;
        let grads = x.as_tensor().matmul(&w.t()?)?.sum_all()?.backward()?;
        assert!(grads.get(&w).is_none());
        // d/dx Σ (x Wᵀ) = 1 Wᵀᵀ = each row is the column sums of Wᵀ, i.e. Σ_j W[j, :]
        let expected = w.sum_keepdim(0)?.broadcast_as((4, 3))?;
        let got = grads.get(x.as_tensor()).expect("grad");
        assert!(got.sub(&expected)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }

    /// `linear`'s op against Candle's matmul formulation: values, and gradients of `x`, `W`
    /// and `b` (`W`'s in its own row-major layout); a frozen operand gets none.
    #[test]
    fn linear_matches_the_matmul_formulation_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(13);
        let x = Var::from_tensor(&rng.normal((2, 5, 7), 1.0, &dev)?)?;
        let w = Var::from_tensor(&rng.normal((4, 7), 1.0, &dev)?)?;
        let b = Var::from_tensor(&rng.normal(4, 1.0, &dev)?)?;
        let t = rng.normal((2, 5, 4), 1.0, &dev)?;
        let ours = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
        let composed = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?;
        assert_eq!(ours.dims(), &[2, 5, 4]);
        assert!(max_abs(&ours, &composed)? < 1e-5);
        let g1 = ours.mul(&t)?.sum_all()?.backward()?;
        let g2 = composed.mul(&t)?.sum_all()?.backward()?;
        assert!(max_grad_diff(&g1, &g2, [&x, &w, &b])? < 1e-4);
        let frozen_w = w.as_tensor().detach();
        let g3 = linear(x.as_tensor(), &frozen_w, None)?
            .sum_all()?
            .backward()?;
        assert!(g3.get(&frozen_w).is_none() && g3.get(x.as_tensor()).is_some());
        assert!(linear(x.as_tensor(), &rng.normal((4, 6), 1.0, &dev)?, None).is_err());
        Ok(())
    }

    /// The fused residual + LayerNorm equals the frozen LayerNorm of the sum bit for bit, and
    /// both inputs get its input gradient; shapes that differ are an error.
    #[test]
    fn frozen_add_layer_norm_matches_the_norm_of_the_sum() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(15);
        let x = Var::from_tensor(&rng.normal((3, 37, 24), 1.0, &dev)?)?;
        let r = Var::from_tensor(&rng.normal((3, 37, 24), 1.0, &dev)?)?;
        let (w, b) = (rng.normal(24, 1.0, &dev)?, rng.normal(24, 1.0, &dev)?);
        let t = rng.normal((3, 37, 24), 1.0, &dev)?;
        let fused = frozen_add_layer_norm(x.as_tensor(), r.as_tensor(), &w, &b, 1e-5)?;
        let sum = x.as_tensor().add(r.as_tensor())?;
        let reference = frozen_layer_norm(&sum, &w, &b, 1e-5)?;
        assert_eq!(
            fused.flatten_all()?.to_vec1::<f32>()?,
            reference.flatten_all()?.to_vec1::<f32>()?
        );
        let g1 = fused.mul(&t)?.sum_all()?.backward()?;
        let g2 = reference.mul(&t)?.sum_all()?.backward()?;
        assert_eq!(max_grad_diff(&g1, &g2, [&x, &r])?, 0.0);
        // a residual of another shape does not silently broadcast
        let short = rng.normal((3, 36, 24), 1.0, &dev)?;
        assert!(frozen_add_layer_norm(x.as_tensor(), &short, &w, &b, 1e-5).is_err());
        Ok(())
    }

    /// The vendored backward pass adds a narrow's gradient into its source's gradient in
    /// place: several narrows of one tensor (overlapping, on inner and outer dimensions,
    /// mixed with a consumer of the whole tensor before and after) give exactly the gradient
    /// an elementwise reference computes.
    #[test]
    fn narrow_backward_accumulates_every_slice() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(12);
        let x = Var::from_tensor(&rng.normal((3, 10, 4), 1.0, &dev)?)?;
        let y = x.as_tensor().exp()?; // a node between the variable and the narrows
        let t: Vec<Tensor> = (0..5)
            .map(|_| rng.normal((3, 10, 4), 1.0, &dev))
            .collect::<Result<_>>()?;
        let loss = (y.narrow(1, 0, 4)?.mul(&t[0].narrow(1, 0, 4)?)?.sum_all()?
            + y.narrow(1, 4, 6)?.mul(&t[1].narrow(1, 4, 6)?)?.sum_all()?)?;
        let loss = (loss + y.narrow(1, 2, 5)?.mul(&t[2].narrow(1, 2, 5)?)?.sum_all()?)?;
        let loss = (loss + y.mul(&t[3])?.sum_all()?)?;
        let loss = (loss + y.narrow(2, 1, 2)?.mul(&t[4].narrow(2, 1, 2)?)?.sum_all()?)?;
        let loss = (loss + y.narrow(0, 2, 1)?.sum_all()?)?;
        let got = loss.backward()?;
        let got = got
            .get(x.as_tensor())
            .expect("grad")
            .flatten_all()?
            .to_vec1::<f32>()?;
        // reference: dL/dy summed per element by hand, times dy/dx = exp(x)
        let tv: Vec<Vec<f32>> = t
            .iter()
            .map(|t| t.flatten_all()?.to_vec1::<f32>())
            .collect::<Result<_>>()?;
        let ev = y.flatten_all()?.to_vec1::<f32>()?;
        for i in 0..3 {
            for j in 0..10 {
                for k in 0..4 {
                    let e = (i * 10 + j) * 4 + k;
                    let mut g = tv[3][e];
                    if j < 4 {
                        g += tv[0][e];
                    } else {
                        g += tv[1][e];
                    }
                    if (2..7).contains(&j) {
                        g += tv[2][e];
                    }
                    if (1..3).contains(&k) {
                        g += tv[4][e];
                    }
                    if i == 2 {
                        g += 1.0;
                    }
                    let want = g * ev[e];
                    assert!((got[e] - want).abs() <= 1e-5 * want.abs().max(1.0), "{e}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn prefix_cat_matches_the_broadcast_cat_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(6);
        let (b, p, s, h) = (3, 2, 4, 5);
        let prefix = Var::from_tensor(&rng.normal((p, h), 1.0, &dev)?)?;
        let x = Var::from_tensor(&rng.normal((b, s, h), 1.0, &dev)?)?;
        let t = rng.normal((b, p + s, h), 1.0, &dev)?;
        let ours = prefix_cat(prefix.as_tensor(), x.as_tensor())?;
        let composed = Tensor::cat(
            &[
                &prefix.as_tensor().unsqueeze(0)?.broadcast_as((b, p, h))?,
                x.as_tensor(),
            ],
            1,
        )?;
        assert_eq!(ours.dims(), &[b, p + s, h]);
        assert_eq!(
            ours.flatten_all()?.to_vec1::<f32>()?,
            composed.flatten_all()?.to_vec1::<f32>()?
        );
        let g1 = ours.mul(&t)?.sum_all()?.backward()?;
        let g2 = composed.mul(&t)?.sum_all()?.backward()?;
        assert!(max_grad_diff(&g1, &g2, [&prefix, &x])? < 1e-5);
        // a frozen prefix (inference) gets no gradient; a width mismatch is an error
        let frozen = prefix.as_tensor().detach();
        let g3 = prefix_cat(&frozen, x.as_tensor())?.sum_all()?.backward()?;
        assert!(g3.get(&frozen).is_none() && g3.get(x.as_tensor()).is_some());
        assert!(prefix_cat(&rng.normal((p, h + 1), 1.0, &dev)?, x.as_tensor()).is_err());
        Ok(())
    }

    #[test]
    fn head_matmul_matches_matmul_on_strided_views_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(4);
        // attention's layout: [B, S, heads, d] projections viewed per head, K transposed
        let (b, s, heads, d, p) = (2, 5, 3, 4, 2);
        let q = Var::from_tensor(&rng.normal((b, s, heads, d), 1.0, &dev)?)?;
        let k = Var::from_tensor(&rng.normal((b, s, heads, d), 1.0, &dev)?)?;
        let v = Var::from_tensor(&rng.normal((b, s, heads, d), 1.0, &dev)?)?;
        // a frozen prefix broadcast over the batch (stride 0), concatenated in front of K
        let prefix = rng.normal((1, heads, p, d), 1.0, &dev)?;
        let per_head = |t: &Var| t.as_tensor().transpose(1, 2);
        let keys = Tensor::cat(&[prefix.broadcast_as((b, heads, p, d))?, per_head(&k)?], 2)?;
        let target = rng.normal((b, heads, s, d), 1.0, &dev)?;
        let ours = {
            let scores = head_matmul(&per_head(&q)?, &keys.transpose(2, 3)?)?;
            let values = Tensor::cat(&[prefix.broadcast_as((b, heads, p, d))?, per_head(&v)?], 2)?;
            head_matmul(&scores, &values)?
        };
        let plain = {
            let scores = per_head(&q)?
                .contiguous()?
                .matmul(&keys.transpose(2, 3)?.contiguous()?)?;
            let values = Tensor::cat(&[prefix.broadcast_as((b, heads, p, d))?, per_head(&v)?], 2)?;
            scores.matmul(&values.contiguous()?)?
        };
        assert_eq!(ours.dims(), &[b, heads, s, d]);
        assert!(max_diff(&ours, &plain) < 1e-5);
        let g1 = ours.mul(&target)?.sum_all()?.backward()?;
        let g2 = plain.mul(&target)?.sum_all()?.backward()?;
        for var in [&q, &k, &v] {
            let (a, b) = (g1.get(var.as_tensor()), g2.get(var.as_tensor()));
            let (a, b) = (a.expect("gradient"), b.expect("gradient"));
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
        // the frozen prefix gets no gradient
        assert!(g1.get(&prefix).is_none());
        // a row's products do not depend on the padded length (batch-size invariance of
        // predictions): small and large products take the same kernels, bit for bit
        let queries = rng.normal((1, 2, 16, 16), 1.0, &dev)?;
        let keys = rng.normal((1, 2, 20, 16), 1.0, &dev)?;
        let bits = |t: Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>());
        let long = head_matmul(&queries, &keys.transpose(2, 3)?)?;
        let short = head_matmul(&queries, &keys.narrow(2, 0, 5)?.transpose(2, 3)?)?;
        assert_eq!(bits(long.narrow(3, 0, 5)?)?, bits(short.clone())?);
        let padded = Tensor::cat(
            &[
                short.clone(),
                Tensor::zeros((1, 2, 16, 15), DType::F32, &dev)?,
            ],
            3,
        )?;
        assert_eq!(
            bits(head_matmul(&padded, &keys)?)?,
            bits(head_matmul(&short, &keys.narrow(2, 0, 5)?)?)?
        );
        // shapes that do not multiply are an error, not a panic
        assert!(head_matmul(&per_head(&q)?, &per_head(&k)?).is_err());
        Ok(())
    }

    #[test]
    fn attention_products_split_heads_inside_with_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(7);
        let (b, s, p, heads, d) = (2, 5, 2, 3, 4);
        let q = Var::from_tensor(&rng.normal((b, s, heads * d), 1.0, &dev)?)?;
        let k = Var::from_tensor(&rng.normal((b, s, heads * d), 1.0, &dev)?)?;
        let v = Var::from_tensor(&rng.normal((b, s, heads * d), 1.0, &dev)?)?;
        // RoBERTa's prefix layout: a frozen [P, H·d] broadcast over the batch, in front of
        // the sequence's keys and values
        let prefix = rng.normal((1, p, heads * d), 1.0, &dev)?;
        let with_prefix = |t: &Var| {
            Tensor::cat(
                &[
                    prefix.broadcast_as((b, p, heads * d))?,
                    t.as_tensor().clone(),
                ],
                1,
            )
        };
        let target = rng.normal((b, s, heads * d), 1.0, &dev)?;
        let ours = {
            let scores = attention_scores(q.as_tensor(), &with_prefix(&k)?, heads)?;
            attention_context(&(scores * 0.1)?, &with_prefix(&v)?)?
        };
        let split = |t: &Tensor| -> Result<Tensor> {
            let (b, n, _) = t.dims3()?;
            t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous()
        };
        let plain = {
            let keys = split(&with_prefix(&k)?)?.transpose(2, 3)?.contiguous()?;
            let scores = split(q.as_tensor())?.matmul(&keys)?;
            (scores * 0.1)?
                .matmul(&split(&with_prefix(&v)?)?)?
                .transpose(1, 2)?
                .reshape((b, s, heads * d))?
        };
        assert_eq!(ours.dims(), &[b, s, heads * d]);
        assert!(max_diff(&ours, &plain) < 1e-5);
        let g1 = ours.mul(&target)?.sum_all()?.backward()?;
        let g2 = plain.mul(&target)?.sum_all()?.backward()?;
        for var in [&q, &k, &v] {
            let a = g1.get(var.as_tensor()).expect("gradient");
            let b = g2.get(var.as_tensor()).expect("gradient");
            assert_eq!(a.dims(), var.dims());
            assert!(max_diff(a, b) < 1e-5, "{}", max_diff(a, b));
        }
        assert!(g1.get(&prefix).is_none());
        // the composed path (off the CPU, other dtypes) computes the same products
        let f64_ctx = {
            let (q, k, v) = (
                q.as_tensor().to_dtype(DType::F64)?,
                with_prefix(&k)?.to_dtype(DType::F64)?,
                with_prefix(&v)?.to_dtype(DType::F64)?,
            );
            attention_context(&(attention_scores(&q, &k, heads)? * 0.1)?, &v)?
        };
        assert!(max_diff(&f64_ctx.to_dtype(DType::F32)?, &ours) < 1e-5);
        // a head count that does not divide the width is an error, not a panic
        assert!(attention_scores(q.as_tensor(), k.as_tensor(), 5).is_err());
        Ok(())
    }

    #[test]
    fn linear_bias_gradient_is_a_blocked_column_sum_independent_of_threads() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(9);
        // 150 rows: three blocks of the column sum, the last one partial
        let (rows, inp, out) = (150, 12, 7);
        let x = Var::from_tensor(&rng.normal((3, rows / 3, inp), 1.0, &dev)?)?;
        let w = Var::from_tensor(&rng.normal((out, inp), 0.5, &dev)?)?;
        let b = Var::from_tensor(&rng.normal(out, 0.5, &dev)?)?;
        let target = rng.normal((3, rows / 3, out), 1.0, &dev)?;
        let grads_of = |y: Tensor| y.mul(&target)?.sum_all()?.backward();
        let ours = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
        let plain = x
            .as_tensor()
            .reshape((rows, inp))?
            .matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?
            .reshape((3, rows / 3, out))?;
        assert!(max_diff(&ours, &plain) < 1e-6);
        let (g1, g2) = (grads_of(ours)?, grads_of(plain)?);
        for var in [&x, &w, &b] {
            let (a, c) = (g1.get(var.as_tensor()), g2.get(var.as_tensor()));
            let (a, c) = (a.expect("gradient"), c.expect("gradient"));
            assert!(max_diff(a, c) < 1e-4, "{}", max_diff(a, c));
        }
        // the bias gradient has the same bits on one thread as on the pool
        let bias_grad = || -> Result<Vec<f32>> {
            let y = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()))?;
            grads_of(y)?
                .get(b.as_tensor())
                .expect("gradient")
                .to_vec1::<f32>()
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a pool")
            .install(bias_grad)?;
        assert_eq!(one, bias_grad()?);
        // a frozen bias gets no gradient; the input still does
        let frozen = b.as_tensor().detach();
        let g = grads_of(linear(x.as_tensor(), w.as_tensor(), Some(&frozen))?)?;
        assert!(g.get(&frozen).is_none() && g.get(x.as_tensor()).is_some());
        Ok(())
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn fused_kernels_match_composed_values_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(9);
        let x = Var::from_tensor(&rng.normal((3, 7, 40), 2.0, &dev)?)?;
        let w = rng.normal(40, 1.0, &dev)?;
        let b = rng.normal(40, 1.0, &dev)?;
        let t = rng.normal((3, 7, 40), 1.0, &dev)?;
        type F = fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;
        let cases: Vec<(&str, F, F)> = vec![
            (
                "layer_norm",
                |x, w, b| frozen_layer_norm(x, w, b, 1e-5),
                |x, w, b| layer_norm(x, w, b, 1e-5),
            ),
            (
                "rms_norm",
                |x, w, _| frozen_rms_norm(x, w, 1e-6),
                |x, w, _| rms_norm(x, w, 1e-6),
            ),
            (
                "softmax",
                |x, _, _| softmax_last_dim(x),
                |x, _, _| softmax_composed(x),
            ),
            (
                "gelu",
                |x, _, _| activate(x, Activation::Gelu),
                |x, _, _| x.gelu_erf(),
            ),
        ];
        for (name, fused, composed) in cases {
            let yf = fused(x.as_tensor(), &w, &b)?;
            let yc = composed(x.as_tensor(), &w, &b)?;
            assert!(
                max_diff(&yf, &yc) < 1e-5,
                "{name} forward: {}",
                max_diff(&yf, &yc)
            );
            let gf = yf.mul(&t)?.sum_all()?.backward()?;
            let gc = yc.mul(&t)?.sum_all()?.backward()?;
            let (gf, gc) = (
                gf.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            let scale = gc.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                max_diff(gf, gc) <= 1e-5 * scale.max(1.0),
                "{name} backward: {}",
                max_diff(gf, gc)
            );
        }
        Ok(())
    }

    #[test]
    fn attention_softmax_matches_composed_for_every_bias_shape() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(11);
        let (b, h, s, k) = (2, 3, 5, 7);
        let x = Var::from_tensor(&rng.normal((b, h, s, k), 2.0, &dev)?)?;
        let t = rng.normal((b, h, s, k), 1.0, &dev)?;
        let padding = Tensor::from_vec(
            (0..b * k)
                .map(|i| if i % k == 6 { -1e9f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            (b, 1, 1, k),
            &dev,
        )?;
        let position = rng.normal((1, h, s, k), 1.0, &dev)?;
        let both = position.broadcast_add(&padding)?;
        for (name, bias, scale) in [
            ("padding", &padding, 0.125),
            ("position", &position, 1.0),
            ("position + padding", &both, 1.0),
        ] {
            let fused = attention_softmax(x.as_tensor(), scale, bias)?;
            let composed = softmax_composed(&(x.as_tensor() * scale)?.broadcast_add(bias)?)?;
            assert!(max_diff(&fused, &composed) < 1e-6, "{name} forward");
            let gf = fused.mul(&t)?.sum_all()?.backward()?;
            let gc = composed.mul(&t)?.sum_all()?.backward()?;
            let (gf, gc) = (
                gf.get(x.as_tensor()).unwrap(),
                gc.get(x.as_tensor()).unwrap(),
            );
            assert!(
                max_diff(gf, gc) < 1e-5,
                "{name} backward {}",
                max_diff(gf, gc)
            );
        }
        Ok(())
    }

    #[test]
    fn dropout_is_seeded_scaled_and_passes_the_same_mask_back() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::ones((64, 1000), DType::F32, &dev)?)?;
        let y1 = dropout(x.as_tensor(), 0.1, &mut crate::rng::PetlRng::seed(5))?;
        let y2 = dropout(x.as_tensor(), 0.1, &mut crate::rng::PetlRng::seed(5))?;
        let y3 = dropout(x.as_tensor(), 0.1, &mut crate::rng::PetlRng::seed(6))?;
        assert_eq!(max_diff(&y1, &y2), 0.0, "same seed, same bits");
        assert!(max_diff(&y1, &y3) > 0.0, "another seed, other bits");
        let v = y1.flatten_all()?.to_vec1::<f32>()?;
        let kept = v.iter().filter(|&&e| e != 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept fraction {kept}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 1.0 / 0.9).abs() < 1e-6));
        // the gradient of sum(dropout(x)) is the dropout factor of each element
        let g = y1.sum_all()?.backward()?;
        let g = g.get(x.as_tensor()).unwrap();
        assert_eq!(max_diff(g, &y1), 0.0);
        // the composed path (other devices) applies the same bits
        let op =
            crate::fused::Dropout::new(64 * 1000, 0.9, crate::rng::PetlRng::seed(5).seed_bytes());
        let factors = Tensor::from_vec(op.scale_factors(), (64, 1000), &dev)?;
        assert_eq!(max_diff(&factors, &y1), 0.0);
        Ok(())
    }

    #[test]
    fn cross_entropy_matches_hand_value() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 0.0], [1.0, 0.0]], &dev)?;
        let labels = Tensor::new(&[0i64, 0], &dev)?;
        let l = cross_entropy(&logits, &labels)?.to_scalar::<f32>()?;
        let expected = (2f32.ln() + (1.0 + (-1f32).exp()).ln()) / 2.0;
        assert!((l - expected).abs() < 1e-6);
        Ok(())
    }
}
