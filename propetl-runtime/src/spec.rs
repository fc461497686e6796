//! The description of a ProPETL model: method, sharing, mask kind, combination and keep ratio.
//!
//! [`PetlConfig`] is `const`-constructible (the `#[propetl]` attribute emits one as
//! `MyModel::PROPETL`) and serde-serializable (it is written into every saved manifest).
//! Structural choices are fixed at compile time by the attribute; numeric hyper-parameters
//! may be overridden at run time with the `with_*` builders.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};

/// How the PETL module is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Share {
    /// One module per layer, no masks: the unshared baseline.
    None,
    /// One prototype shared by all layers, one mask per layer.
    Layers,
    /// One module per layer, one mask per (task, layer).
    Tasks,
    /// One prototype for all layers and tasks; a task mask combined with a layer mask.
    #[serde(rename = "layers+tasks")]
    LayersTasks,
}

/// Whether the shared module is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskKind {
    /// Learned binary masks (top-k of scores, straight-through gradient).
    Binary,
    /// No masks (with sharing, this is the sharing-only ablation).
    None,
}

/// How a task mask and a layer mask are combined (method page §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// `1 − (1 − T)(1 − L)` (the paper's setting).
    Or,
    /// `T · L`.
    And,
    /// `T + L` (values 0, 1, 2).
    Add,
}

/// Activation of the adapter bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
    /// The tanh approximation of GELU (`gelu_new` in transformers).
    GeluNew,
    /// Exact (erf) GELU.
    Gelu,
}

/// A projection that LoRA can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
}

/// Adapter width: either a reduction factor of the hidden size or an explicit bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterSize {
    /// bottleneck = hidden / reduction.
    Reduction(usize),
    /// A fixed bottleneck width.
    Bottleneck(usize),
}

/// The PETL method and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Method {
    /// Pfeiffer adapter after the FFN.
    Adapter {
        /// Width of the bottleneck.
        size: AdapterSize,
        /// Bottleneck activation.
        activation: Activation,
        /// Standard deviation of the N(0, σ) weight init.
        init_std: f64,
    },
    /// LoRA on attention projections.
    Lora {
        /// Rank.
        r: usize,
        /// Scaling numerator: the update is scaled by `alpha / r`.
        alpha: f64,
        /// Projections that receive an update (one prototype each).
        targets: Cow<'static, [LoraTarget]>,
    },
    /// Prefix tuning with the embedding + tanh MLP reparameterization.
    Prefix {
        /// Number of prefix positions.
        length: usize,
        /// Hidden width of the reparameterization MLP.
        hidden: usize,
    },
}

impl Method {
    /// The paper's adapter: reduction 12, ReLU, N(0, 0.02).
    pub const ADAPTER: Method = Method::Adapter {
        size: AdapterSize::Reduction(12),
        activation: Activation::Relu,
        init_std: 0.02,
    };
    /// The paper's LoRA: r 32, α 48, on q and v.
    pub const LORA: Method = Method::Lora {
        r: 32,
        alpha: 48.0,
        targets: Cow::Borrowed(&[LoraTarget::Q, LoraTarget::V]),
    };
    /// The paper's prefix: length 64, MLP hidden 512.
    pub const PREFIX: Method = Method::Prefix {
        length: 64,
        hidden: 512,
    };

    /// Short name: `adapter`, `lora` or `prefix`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Adapter { .. } => "adapter",
            Method::Lora { .. } => "lora",
            Method::Prefix { .. } => "prefix",
        }
    }

    /// The paper's default keep ratio of this method (method page §3).
    pub fn default_keep(&self) -> f64 {
        match self {
            Method::Adapter { .. } => 0.5,
            Method::Lora { .. } | Method::Prefix { .. } => 0.1,
        }
    }

    /// The paper's mask-score learning rate of this method (method page §3).
    pub fn default_mask_lr(&self) -> f64 {
        match self {
            Method::Adapter { .. } => 3e-3,
            Method::Lora { .. } => 3e-2,
            Method::Prefix { .. } => 1e-4,
        }
    }
}

/// A complete ProPETL description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PetlConfig {
    /// The PETL method.
    pub method: Method,
    /// Sharing mode.
    pub share: Share,
    /// Mask kind.
    pub mask: MaskKind,
    /// Combination of task and layer masks (only used with `Share::LayersTasks`).
    pub combine: Combine,
    /// Fraction of prototype entries each mask keeps, in (0, 1].
    pub keep: f64,
}

impl PetlConfig {
    /// The ProPETL default for a method: shared across layers, binary masks, the paper's keep.
    pub fn pro(method: Method) -> Self {
        let keep = method.default_keep();
        Self {
            method,
            share: Share::Layers,
            mask: MaskKind::Binary,
            combine: Combine::Or,
            keep,
        }
    }

    /// The unshared baseline of a method (one module per layer, no masks).
    pub fn unshared(method: Method) -> Self {
        Self {
            share: Share::None,
            mask: MaskKind::None,
            ..Self::pro(method)
        }
    }

    /// Override the keep ratio.
    pub fn with_keep(mut self, keep: f64) -> Self {
        self.keep = keep;
        self
    }

    /// Override the sharing mode.
    pub fn with_share(mut self, share: Share) -> Self {
        self.share = share;
        if share == Share::None {
            self.mask = MaskKind::None;
        }
        self
    }

    /// Whether this configuration learns masks.
    pub fn is_masked(&self) -> bool {
        self.mask == MaskKind::Binary && self.share != Share::None
    }

    /// Whether the prototype is one module shared by all layers.
    pub fn shares_layers(&self) -> bool {
        matches!(self.share, Share::Layers | Share::LayersTasks)
    }

    /// Check ranges and combinations; the attribute checks the same at compile time.
    pub fn validate(&self) -> Result<()> {
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            return Err(PetlError::config(format!(
                "keep must lie in (0, 1], got {}",
                self.keep
            )));
        }
        match &self.method {
            Method::Adapter { size, init_std, .. } => {
                if matches!(size, AdapterSize::Reduction(0) | AdapterSize::Bottleneck(0)) {
                    return Err(PetlError::config(
                        "adapter reduction/bottleneck must be > 0",
                    ));
                }
                if !(init_std.is_finite() && *init_std >= 0.0) {
                    return Err(PetlError::config(
                        "adapter init_std must be finite and >= 0",
                    ));
                }
            }
            Method::Lora { r, alpha, targets } => {
                if *r == 0 {
                    return Err(PetlError::config("LoRA rank r must be > 0"));
                }
                if !alpha.is_finite() {
                    return Err(PetlError::config("LoRA alpha must be finite"));
                }
                if targets.is_empty() {
                    return Err(PetlError::config("LoRA needs at least one target"));
                }
                let mut sorted = targets.to_vec();
                sorted.sort();
                sorted.dedup();
                if sorted.len() != targets.len() {
                    return Err(PetlError::config("LoRA targets contain a duplicate"));
                }
            }
            Method::Prefix { length, hidden } => {
                if *length == 0 || *hidden == 0 {
                    return Err(PetlError::config("prefix length and hidden must be > 0"));
                }
            }
        }
        Ok(())
    }

    /// A one-line human description, e.g. `adapter share=layers mask=binary keep=0.5`.
    pub fn describe(&self) -> String {
        if self.is_masked() {
            format!(
                "{} share={} mask=binary keep={}",
                self.method.name(),
                self.share,
                self.keep
            )
        } else {
            format!("{} share={} mask=none", self.method.name(), self.share)
        }
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Share::None => "none",
            Share::Layers => "layers",
            Share::Tasks => "tasks",
            Share::LayersTasks => "layers+tasks",
        })
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
        })
    }
}

macro_rules! from_str_enum {
    ($ty:ty, $what:literal, { $($s:literal => $v:expr),* $(,)? }) => {
        impl std::str::FromStr for $ty {
            type Err = PetlError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($v),)*
                    other => Err(PetlError::config(format!(
                        concat!("unknown ", $what, " `{}` (expected one of: {})"),
                        other,
                        [$($s),*].join(", ")
                    ))),
                }
            }
        }
    };
}

from_str_enum!(Share, "share", { "none" => Share::None, "layers" => Share::Layers, "tasks" => Share::Tasks, "layers+tasks" => Share::LayersTasks });
from_str_enum!(MaskKind, "mask", { "binary" => MaskKind::Binary, "none" => MaskKind::None });
from_str_enum!(Combine, "combine", { "or" => Combine::Or, "and" => Combine::And, "add" => Combine::Add });
from_str_enum!(Activation, "activation", { "relu" => Activation::Relu, "gelu_new" => Activation::GeluNew, "gelu" => Activation::Gelu });
from_str_enum!(LoraTarget, "LoRA target", { "q" => LoraTarget::Q, "k" => LoraTarget::K, "v" => LoraTarget::V, "o" => LoraTarget::O });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_paper() {
        let c = PetlConfig::pro(Method::ADAPTER);
        assert_eq!(c.keep, 0.5);
        assert_eq!(c.share, Share::Layers);
        assert_eq!(PetlConfig::pro(Method::LORA).keep, 0.1);
        assert_eq!(PetlConfig::pro(Method::PREFIX).keep, 0.1);
        assert!(!PetlConfig::unshared(Method::ADAPTER).is_masked());
    }

    #[test]
    fn serde_round_trip() {
        let c = PetlConfig::pro(Method::LORA).with_share(Share::LayersTasks);
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"layers+tasks\""), "{s}");
        let back: PetlConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn validation_rejects_bad_values() {
        assert!(PetlConfig::pro(Method::ADAPTER)
            .with_keep(0.0)
            .validate()
            .is_err());
        assert!(PetlConfig::pro(Method::ADAPTER)
            .with_keep(1.5)
            .validate()
            .is_err());
        assert!(PetlConfig::pro(Method::ADAPTER)
            .with_keep(1.0)
            .validate()
            .is_ok());
        let bad = PetlConfig::pro(Method::Lora {
            r: 0,
            alpha: 1.0,
            targets: Cow::Borrowed(&[LoraTarget::Q]),
        });
        assert!(bad.validate().is_err());
        assert!("layer".parse::<Share>().is_err());
        assert_eq!("layers+tasks".parse::<Share>().unwrap(), Share::LayersTasks);
    }
}
