//! Differentiable building blocks.
//!
//! Candle 0.11's fused `candle_nn::ops::softmax_last_dim`, `candle_nn::ops::layer_norm` and
//! `candle_nn::LayerNorm::forward` have no backward pass: gradients silently stop there. Every
//! op here is composed of primitive tensor ops that Candle can differentiate.

use candle_core::{DType, Result, Tensor, D};

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

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
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
pub fn frozen_layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    layer_norm(x, &weight.detach(), &bias.detach(), eps)
}

/// T5's RMS LayerNorm (no mean subtraction, no bias).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(weight)
}

/// `x Wᵀ + b` for `x` of any rank ≥ 2 (`W` is `[out, in]`, PyTorch layout).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims();
    let in_dim = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
    let y = match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = weight.dim(0)?;
    y.reshape(out_dims)
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
        use candle_core::backend::BackendStorage;
        let (m, k) = layout.shape().dims2()?;
        let n = self.weight.dim(0)?;
        let wt = self.weight.t()?;
        let (w_storage, w_layout) = wt.storage_and_layout();
        let candle_core::Storage::Cpu(w_cpu) = &*w_storage else {
            candle_core::bail!("frozen-linear: weight is not on the CPU")
        };
        let mut out = storage.matmul(w_cpu, (1, m, n, k), layout, w_layout)?;
        if let Some(b) = &self.bias {
            let b = b.to_vec1::<f32>()?;
            if let candle_core::CpuStorage::F32(v) = &mut out {
                for row in v.chunks_exact_mut(n) {
                    for (o, bi) in row.iter_mut().zip(&b) {
                        *o += bi;
                    }
                }
            } else {
                candle_core::bail!("frozen-linear: expected f32 output")
            }
        }
        Ok((out, candle_core::Shape::from((m, n))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// Apply an activation.
pub fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Relu => x.relu(),
        Activation::GeluNew => x.gelu(),
        Activation::Gelu if crate::fused::applies(x) => {
            x.contiguous()?.apply_op1(crate::fused::GeluErf)
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

/// Inverted dropout with a mask drawn from the caller's seeded RNG; identity when `p == 0`.
pub fn dropout(x: &Tensor, p: f64, rng: &mut crate::rng::PetlRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let n = x.elem_count();
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.uniform01() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

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
