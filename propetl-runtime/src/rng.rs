//! A seeded random number generator for initialization, dropout and shuffling.
//!
//! Candle's CPU `randn` cannot be seeded, so every random tensor of propetl comes from here.

use candle_core::{Device, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// The serializable position of a [`PetlRng`] (for resumable training).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RngState {
    /// ChaCha seed.
    pub seed: [u8; 32],
    /// ChaCha stream.
    pub stream: u64,
    /// Word position (a u128, as decimal text: JSON numbers cannot hold it).
    pub word_pos: String,
}

/// Deterministic RNG (ChaCha8) with tensor helpers.
#[derive(Debug, Clone)]
pub struct PetlRng(ChaCha8Rng);

impl PetlRng {
    /// A generator from a seed.
    pub fn seed(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// The generator's exact position, to continue it later ([`from_state`](Self::from_state)).
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.0.get_seed(),
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos().to_string(),
        }
    }

    /// A generator continuing exactly where [`state`](Self::state) was taken.
    pub fn from_state(state: &RngState) -> std::result::Result<Self, String> {
        let pos: u128 = state
            .word_pos
            .parse()
            .map_err(|_| format!("bad RNG word position `{}`", state.word_pos))?;
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(pos);
        Ok(Self(rng))
    }

    /// A uniform float in [0, 1).
    pub fn uniform01(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    /// 32 bytes from the stream: the seed of a derived generator (e.g. one dropout call's).
    pub fn seed_bytes(&mut self) -> [u8; 32] {
        self.0.random()
    }

    /// A uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }

    /// Shuffle a slice in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        use rand::seq::SliceRandom;
        xs.shuffle(&mut self.0);
    }

    /// Tensor of N(0, std²) samples.
    pub fn normal(&mut self, shape: impl Into<Shape>, std: f64, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| {
                let z: f64 = StandardNormal.sample(&mut self.0);
                (z * std) as f32
            })
            .collect();
        Tensor::from_vec(v, shape, dev)
    }

    /// Tensor of U(−bound, bound) samples.
    pub fn uniform(&mut self, shape: impl Into<Shape>, bound: f64, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let v: Vec<f32> = (0..shape.elem_count())
            .map(|_| ((self.uniform01() * 2.0 - 1.0) * bound) as f32)
            .collect();
        Tensor::from_vec(v, shape, dev)
    }

    /// PyTorch's `kaiming_uniform_(a = √5)`: U(−b, b), b = 1/√fan_in,
    /// with fan_in = size(1)·prod(size[2..]) (size(0) for 1-D tensors).
    pub fn kaiming_uniform(&mut self, shape: impl Into<Shape>, dev: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let bound = 1.0 / (fan_in(shape.dims()) as f64).sqrt();
        self.uniform(shape, bound, dev)
    }
}

/// PyTorch's fan-in of a tensor shape.
pub fn fan_in(dims: &[usize]) -> usize {
    match dims.len() {
        0 => 1,
        1 => dims[0].max(1),
        _ => dims[1..].iter().product::<usize>().max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_continues_the_stream_exactly() {
        let mut a = PetlRng::seed(11);
        for _ in 0..17 {
            a.uniform01();
        }
        let saved = a.state();
        let json = serde_json::to_string(&saved).unwrap();
        let mut b = PetlRng::from_state(&serde_json::from_str(&json).unwrap()).unwrap();
        let xs: Vec<f64> = (0..50).map(|_| a.uniform01()).collect();
        let ys: Vec<f64> = (0..50).map(|_| b.uniform01()).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn same_seed_same_tensor() -> Result<()> {
        let a = PetlRng::seed(7).normal((3, 4), 1.0, &Device::Cpu)?;
        let b = PetlRng::seed(7).normal((3, 4), 1.0, &Device::Cpu)?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn kaiming_bound() -> Result<()> {
        let t = PetlRng::seed(1).kaiming_uniform((64, 768), &Device::Cpu)?;
        let m = t.abs()?.max_all()?.to_scalar::<f32>()?;
        let b = 1.0 / 768f32.sqrt();
        assert!(m <= b && m > 0.9 * b, "{m} vs {b}");
        assert_eq!(fan_in(&[12, 64, 1536]), 64 * 1536);
        Ok(())
    }
}
