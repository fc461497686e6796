//! Binary masks: top-k binarization, the straight-through estimator, mask combination and
//! bit packing (method page §2).
//!
//! Candle has no top-k op. Binarization copies the scores to the host and finds the
//! boundary with `select_nth_unstable_by` — O(n) per tensor plus one device→host copy.
//! Measured on 2 cores (`cargo bench --bench training`): 125–135 µs per roberta-base adapter
//! score tensor (49,152 entries), 57–64 µs per LoRA tensor, 254 µs for a prefix slice; the 24
//! tensors of a ProAdapter step cost ~3 ms of a ~4 s step. Frozen masks skip it entirely.

use candle_core::{DType, Tensor};

use crate::error::{PetlError, Result};
use crate::spec::Combine;

/// Number of entries zeroed for `n` entries at keep ratio `keep`: `floor((1 − keep)·n)` in f64.
pub fn dropped_count(n: usize, keep: f64) -> usize {
    (((1.0 - keep) * n as f64).floor() as usize).min(n)
}

/// Number of entries a mask of `n` entries keeps at keep ratio `keep`.
pub fn kept_count(n: usize, keep: f64) -> usize {
    n - dropped_count(n, keep)
}

/// Binarize host scores: the `j = floor((1 − keep)·n)` entries of smallest `|score|` (ties
/// broken by index, lower index dropped first) become 0, the rest 1.
///
/// Errors on NaN/infinite scores (they would make the ranking meaningless).
pub fn binarize_host(scores: &[f32], keep: f64, name: &str) -> Result<Vec<u8>> {
    if scores.iter().any(|s| !s.is_finite()) {
        return Err(PetlError::NonFiniteScores(name.to_string()));
    }
    let n = scores.len();
    let j = dropped_count(n, keep);
    let mut out = vec![1u8; n];
    if j == 0 {
        return Ok(out);
    }
    if j == n {
        return Ok(vec![0u8; n]);
    }
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let key = |i: &u32| (scores[*i as usize].abs(), *i);
    idx.select_nth_unstable_by(j - 1, |a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
    });
    for &i in &idx[..j] {
        out[i as usize] = 0;
    }
    Ok(out)
}

/// The hard 0/1 mask (f32, no gradient) of a score tensor.
pub fn binarize(scores: &Tensor, keep: f64, name: &str) -> Result<Tensor> {
    let host = scores
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bits = binarize_host(&host, keep, name)?;
    let vals: Vec<f32> = bits.into_iter().map(f32::from).collect();
    Ok(Tensor::from_vec(vals, scores.shape(), scores.device())?.to_dtype(scores.dtype())?)
}

/// Attach the straight-through gradient to a hard mask: the forward value is exactly `hard`,
/// and `dL/dS = dL/dM ⊙ sign(S)` (the gradient passes to |S| unchanged).
pub fn straight_through(hard: &Tensor, scores: &Tensor) -> Result<Tensor> {
    let sign = scores.sign()?.detach();
    let a = scores.mul(&sign)?; // |S| with d|S|/dS = sign(S), sign(0) = 0 as in PyTorch
                                // a − a.detach() is exactly 0 in the forward pass, so the result equals `hard` bit for bit.
    Ok(hard.add(&a.sub(&a.detach())?)?)
}

/// Binarize with keep ratio `keep` and attach the straight-through gradient.
pub fn ste_mask(scores: &Tensor, keep: f64, name: &str) -> Result<Tensor> {
    let hard = binarize(scores, keep, name)?;
    straight_through(&hard, scores)
}

/// Combine a task mask and a layer mask. With STE masks the autograd gradients are the
/// method page's: for `or`, T gets `g·(1 − L)` and L gets `g·(1 − T)`.
pub fn combine(task: &Tensor, layer: &Tensor, how: Combine) -> Result<Tensor> {
    Ok(match how {
        Combine::Or => {
            let one_minus_t = task.affine(-1.0, 1.0)?;
            let one_minus_l = layer.affine(-1.0, 1.0)?;
            one_minus_t.mul(&one_minus_l)?.affine(-1.0, 1.0)?
        }
        Combine::And => task.mul(layer)?,
        Combine::Add => task.add(layer)?,
    })
}

/// Pack 0/1 bytes into bits, least significant bit first, in row-major entry order.
pub fn pack_bits(mask: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; mask.len().div_ceil(8)];
    for (i, &m) in mask.iter().enumerate() {
        if m != 0 {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Unpack `n` entries packed by [`pack_bits`]. Errors if `bytes` is not exactly `⌈n/8⌉` long
/// or if padding bits are set.
pub fn unpack_bits(bytes: &[u8], n: usize) -> std::result::Result<Vec<u8>, String> {
    if bytes.len() != n.div_ceil(8) {
        return Err(format!(
            "{} bytes cannot hold exactly {} mask bits (need {})",
            bytes.len(),
            n,
            n.div_ceil(8)
        ));
    }
    if !n.is_multiple_of(8) {
        let last = bytes[bytes.len() - 1];
        if last >> (n % 8) != 0 {
            return Err("padding bits are set".to_string());
        }
    }
    Ok((0..n).map(|i| (bytes[i / 8] >> (i % 8)) & 1).collect())
}

/// A hard mask tensor to 0/1 bytes (entries > 0.5 count as 1).
pub fn mask_to_bytes(mask: &Tensor) -> Result<Vec<u8>> {
    let v = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.into_iter().map(|x| u8::from(x > 0.5)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    #[test]
    fn kept_counts_for_many_sizes() {
        for n in [1usize, 2, 3, 5, 7, 10, 64, 320, 1000, 49_152] {
            for &k in &[0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0] {
                let scores: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1013) as f32 - 500.0).collect();
                let bits = binarize_host(&scores, k, "t").unwrap();
                let kept = bits.iter().filter(|&&b| b == 1).count();
                let expected = n - ((1.0 - k) * n as f64).floor() as usize;
                assert_eq!(kept, expected, "n={n} k={k}");
                assert_eq!(kept, kept_count(n, k));
            }
        }
        // k = 1.0 keeps everything, tiny n with small k drops all but the rounding.
        assert_eq!(
            binarize_host(&[0.0, 0.0, 0.0], 1.0, "t").unwrap(),
            vec![1, 1, 1]
        );
        assert_eq!(kept_count(1, 0.1), 1); // floor(0.9) = 0 dropped
        assert_eq!(kept_count(10, 0.1), 1);
        // 1 - 0.7 = 0.30000000000000004 in f64: floor(0.3·10) = 3
        assert_eq!(dropped_count(10, 0.7), 3);
    }

    #[test]
    fn ties_break_by_index() {
        // All equal magnitudes: the lowest indices are dropped first.
        let bits = binarize_host(&[0.5, -0.5, 0.5, -0.5, 0.5, 0.5], 0.5, "t").unwrap();
        assert_eq!(bits, vec![0, 0, 0, 1, 1, 1]);
        // Smallest magnitudes dropped regardless of sign.
        let bits = binarize_host(&[-3.0, 0.1, 2.0, -0.2], 0.5, "t").unwrap();
        assert_eq!(bits, vec![1, 0, 1, 0]);
    }

    #[test]
    fn nan_scores_are_an_error() {
        assert!(binarize_host(&[1.0, f32::NAN], 0.5, "bad").is_err());
    }

    #[test]
    fn straight_through_gradient_is_sign() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let s = Var::from_vec(vec![0.3f32, -0.2, 0.05, -0.9], (2, 2), &dev)?;
        let m = ste_mask(s.as_tensor(), 0.5, "s").unwrap();
        assert_eq!(m.to_vec2::<f32>()?, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
        let g_out = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev)?;
        let grads = m.mul(&g_out)?.sum_all()?.backward()?;
        let g = grads.get(s.as_tensor()).unwrap().to_vec2::<f32>()?;
        assert_eq!(g, vec![vec![1.0, -2.0], vec![3.0, -4.0]]);
        Ok(())
    }

    #[test]
    fn combination_gradients_follow_the_formulas() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let ts = Var::from_vec(vec![0.9f32, 0.1, -0.8, 0.2], 4, &dev)?;
        let ls = Var::from_vec(vec![0.1f32, 0.7, -0.6, -0.05], 4, &dev)?;
        let g = Tensor::new(&[1.0f32, 2.0, 3.0, 4.0], &dev)?;
        let t_hard = binarize(ts.as_tensor(), 0.5, "t").unwrap();
        let l_hard = binarize(ls.as_tensor(), 0.5, "l").unwrap();
        let tv = t_hard.to_vec1::<f32>()?;
        let lv = l_hard.to_vec1::<f32>()?;
        assert_eq!(tv, vec![1.0, 0.0, 1.0, 0.0]);
        assert_eq!(lv, vec![0.0, 1.0, 1.0, 0.0]);
        let sign = |v: &Var| v.as_tensor().sign().unwrap().to_vec1::<f32>().unwrap();
        let gv = g.to_vec1::<f32>()?;
        for how in [Combine::Or, Combine::And, Combine::Add] {
            let t = ste_mask(ts.as_tensor(), 0.5, "t").unwrap();
            let l = ste_mask(ls.as_tensor(), 0.5, "l").unwrap();
            let m = combine(&t, &l, how).unwrap();
            let mv = m.to_vec1::<f32>()?;
            let grads = m.mul(&g)?.sum_all()?.backward()?;
            let gt = grads.get(ts.as_tensor()).unwrap().to_vec1::<f32>()?;
            let gl = grads.get(ls.as_tensor()).unwrap().to_vec1::<f32>()?;
            for i in 0..4 {
                let (t, l) = (tv[i], lv[i]);
                let (expect_m, dt, dl) = match how {
                    Combine::Or => (1.0 - (1.0 - t) * (1.0 - l), 1.0 - l, 1.0 - t),
                    Combine::And => (t * l, l, t),
                    Combine::Add => (t + l, 1.0, 1.0),
                };
                assert_eq!(mv[i], expect_m, "{how:?} value {i}");
                assert_eq!(gt[i], gv[i] * dt * sign(&ts)[i], "{how:?} dT {i}");
                assert_eq!(gl[i], gv[i] * dl * sign(&ls)[i], "{how:?} dL {i}");
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn bits_round_trip(mask in proptest::collection::vec(0u8..=1, 0..300)) {
            let packed = pack_bits(&mask);
            prop_assert_eq!(packed.len(), mask.len().div_ceil(8));
            prop_assert_eq!(unpack_bits(&packed, mask.len()).unwrap(), mask);
        }

        #[test]
        fn binarize_keeps_exact_count(scores in proptest::collection::vec(-10f32..10f32, 1..500), keep in 0.001f64..=1.0) {
            let bits = binarize_host(&scores, keep, "p").unwrap();
            prop_assert_eq!(bits.iter().filter(|&&b| b == 1).count(), kept_count(scores.len(), keep));
            // every kept magnitude >= every dropped magnitude
            let kept_min = scores.iter().zip(&bits).filter(|(_, &b)| b == 1).map(|(s, _)| s.abs()).fold(f32::INFINITY, f32::min);
            let drop_max = scores.iter().zip(&bits).filter(|(_, &b)| b == 0).map(|(s, _)| s.abs()).fold(0.0f32, f32::max);
            prop_assert!(kept_min >= drop_max);
        }
    }

    #[test]
    fn unpack_rejects_wrong_lengths() {
        assert!(unpack_bits(&[0xff], 9).is_err());
        assert!(unpack_bits(&[0xff], 4).is_err()); // padding bits set
        assert_eq!(unpack_bits(&[0x0f], 4).unwrap(), vec![1, 1, 1, 1]);
    }
}
