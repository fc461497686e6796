//! The trainable classification / regression head of the RoBERTa variants.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl_runtime::{ops, ForwardMode, PetlRng, Role, TaskKind, Trainable};

use crate::error::{ModelError, Result};

/// The classification / regression head: `out_proj(tanh(dense(dropout(x[:,0]))))`.
#[derive(Debug, Clone)]
pub struct ClassificationHead {
    dense_w: candle_core::Var,
    dense_b: candle_core::Var,
    out_w: candle_core::Var,
    out_b: candle_core::Var,
    dropout: f64,
    /// What the head predicts (one output = regression with MSE).
    pub kind: TaskKind,
}

impl ClassificationHead {
    /// Create a trainable head (`head.*`) for `kind`, init N(0, 0.02), zero biases, registered
    /// in `varmap`.
    pub fn new(
        hidden: usize,
        kind: TaskKind,
        dropout: f64,
        varmap: &VarMap,
        rng: &mut PetlRng,
        dev: &Device,
    ) -> Result<Self> {
        let outputs = match kind {
            TaskKind::Classification { num_labels } if num_labels >= 2 => num_labels,
            TaskKind::Classification { num_labels } => {
                return Err(ModelError::Config(format!(
                    "a classification head needs at least 2 labels, got {num_labels}"
                )))
            }
            TaskKind::Regression => 1,
        };
        let mut data = varmap.data().lock().expect("varmap lock");
        let mut var = |name: &str, t: Tensor| -> Result<candle_core::Var> {
            let v = candle_core::Var::from_tensor(&t)?;
            data.insert(name.to_string(), v.clone());
            Ok(v)
        };
        Ok(Self {
            dense_w: var(
                "head.dense.weight",
                rng.normal((hidden, hidden), 0.02, dev)?,
            )?,
            dense_b: var("head.dense.bias", Tensor::zeros(hidden, DType::F32, dev)?)?,
            out_w: var(
                "head.out_proj.weight",
                rng.normal((outputs, hidden), 0.02, dev)?,
            )?,
            out_b: var(
                "head.out_proj.bias",
                Tensor::zeros(outputs, DType::F32, dev)?,
            )?,
            dropout,
            kind,
        })
    }

    pub(crate) fn forward(
        &self,
        hidden: &Tensor,
        mode: &mut ForwardMode,
    ) -> candle_core::Result<Tensor> {
        let x = mode.dropout(&hidden.narrow(1, 0, 1)?.squeeze(1)?, self.dropout)?;
        let x =
            ops::linear(&x, self.dense_w.as_tensor(), Some(self.dense_b.as_tensor()))?.tanh()?;
        let x = mode.dropout(&x, self.dropout)?;
        ops::linear(&x, self.out_w.as_tensor(), Some(self.out_b.as_tensor()))
    }

    /// The head's trainable tensors: weights decayed, biases not.
    pub fn trainables(&self) -> Vec<Trainable> {
        vec![
            Trainable::new("head.dense.weight", self.dense_w.clone(), Role::Decay),
            Trainable::new("head.dense.bias", self.dense_b.clone(), Role::NoDecay),
            Trainable::new("head.out_proj.weight", self.out_w.clone(), Role::Decay),
            Trainable::new("head.out_proj.bias", self.out_b.clone(), Role::NoDecay),
        ]
    }
}
