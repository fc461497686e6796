//! The loss of method page §5.

use candle_core::{DType, Tensor};
use propetl_runtime::ops;

use crate::error::Result;

/// Label-smoothed NLL (fairseq form, ε/V on every class) **summed** over target tokens,
/// ignoring positions whose label is `pad` (method page §5).
pub fn label_smoothed_loss(logits: &Tensor, labels: &Tensor, eps: f64, pad: u32) -> Result<Tensor> {
    let (b, t, v) = logits.dims3()?;
    let logp = ops::log_softmax_last_dim(&logits.reshape((b * t, v))?)?;
    let labels = labels.to_dtype(DType::U32)?.reshape(b * t)?;
    let keep = labels.ne(pad)?.to_dtype(DType::F32)?;
    let safe = labels
        .to_dtype(DType::F32)?
        .mul(&keep)?
        .to_dtype(DType::U32)?;
    let nll = logp.gather(&safe.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let smooth = logp.sum(1)?.neg()?;
    let per = ((nll * (1.0 - eps))? + (smooth * (eps / v as f64))?)?;
    Ok(per.mul(&keep)?.sum_all()?)
}
