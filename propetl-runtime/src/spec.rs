//! The description of a ProPETL model: method, sharing, mask kind, combination and keep ratio.
//!
//! [`PetlConfig`] is `const`-constructible (the `#[propetl]` attribute emits one as
//! `MyModel::PROPETL`) and serde-serializable (it is written into every saved manifest).
//! Structural choices are fixed at compile time by the attribute; numeric hyper-parameters
//! may be overridden at run time with the `with_*` builders.
//!
//! Names, the paper's defaults and the validation rules come from `propetl-vocab`, which the
//! attribute uses too: a name, default or combination means the same at compile and run time,
//! and is rejected with the same message.

use std::borrow::Cow;
use std::fmt;

use propetl_vocab::{self as vocab, defaults, Structure};
use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};

pub use propetl_vocab::MethodKind;

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

/// The paper's LoRA targets as runtime values (checked against the vocabulary at compile time).
const PAPER_LORA_TARGETS: [LoraTarget; 2] = [
    LoraTarget::ALL[vocab::index_of(vocab::TARGETS, defaults::LORA_TARGETS[0])],
    LoraTarget::ALL[vocab::index_of(vocab::TARGETS, defaults::LORA_TARGETS[1])],
];

impl Method {
    /// The paper's adapter: reduction 12, ReLU, N(0, 0.02).
    pub const ADAPTER: Method = Method::Adapter {
        size: AdapterSize::Reduction(defaults::ADAPTER_REDUCTION),
        activation: Activation::ALL
            [vocab::index_of(vocab::ACTIVATIONS, defaults::ADAPTER_ACTIVATION)],
        init_std: defaults::ADAPTER_INIT_STD,
    };
    /// The paper's LoRA: r 32, α 48, on q and v.
    pub const LORA: Method = Method::Lora {
        r: defaults::LORA_R,
        alpha: defaults::LORA_ALPHA,
        targets: Cow::Borrowed(&PAPER_LORA_TARGETS),
    };
    /// The paper's prefix: length 64, MLP hidden 512.
    pub const PREFIX: Method = Method::Prefix {
        length: defaults::PREFIX_LENGTH,
        hidden: defaults::PREFIX_HIDDEN,
    };

    /// The paper's method of a name (`adapter`, `lora`, `prefix`); unknown names get the
    /// attribute's "did you mean" message.
    pub fn paper(name: &str) -> Result<Method> {
        let kind = MethodKind::parse(name).map_err(PetlError::config)?;
        Ok(match kind {
            MethodKind::Adapter => Method::ADAPTER,
            MethodKind::Lora => Method::LORA,
            MethodKind::Prefix => Method::PREFIX,
        })
    }

    /// The method without its hyper-parameters.
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Adapter { .. } => MethodKind::Adapter,
            Method::Lora { .. } => MethodKind::Lora,
            Method::Prefix { .. } => MethodKind::Prefix,
        }
    }

    /// Short name: `adapter`, `lora` or `prefix`.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The paper's default keep ratio of this method (method page §3).
    pub fn default_keep(&self) -> f64 {
        self.kind().default_keep()
    }

    /// The paper's mask-score learning rate of this method (method page §3).
    pub fn default_mask_lr(&self) -> f64 {
        self.kind().default_mask_lr()
    }

    /// Check the hyper-parameters with the attribute's rules.
    fn check(&self) -> std::result::Result<(), vocab::Problem> {
        match self {
            Method::Adapter { size, init_std, .. } => {
                match *size {
                    AdapterSize::Reduction(r) => vocab::check_size("reduction", r)?,
                    AdapterSize::Bottleneck(b) => vocab::check_size("bottleneck", b)?,
                }
                vocab::check_init_std(*init_std)
            }
            Method::Lora { r, alpha, targets } => {
                vocab::check_size("r", *r)?;
                vocab::check_alpha(*alpha)?;
                let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
                vocab::check_targets(&names)
            }
            Method::Prefix { length, hidden } => {
                vocab::check_size("length", *length)?;
                vocab::check_size("hidden", *hidden)
            }
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
            share: Share::DEFAULT,
            mask: MaskKind::default_for(Share::DEFAULT),
            combine: Combine::DEFAULT,
            keep,
        }
    }

    /// The unshared baseline of a method (one module per layer, no masks).
    pub fn unshared(method: Method) -> Self {
        Self {
            share: Share::None,
            mask: MaskKind::default_for(Share::None),
            ..Self::pro(method)
        }
    }

    /// A configuration from structural names, as the attribute would build it from
    /// `share = …, mask = …, combine = …, keep = …` (`None`: not given, the default applies).
    /// Unknown names and the combinations the attribute rejects are errors with its messages.
    pub fn from_names(
        method: Method,
        share: Option<&str>,
        mask: Option<&str>,
        combine: Option<&str>,
        keep: Option<f64>,
    ) -> Result<Self> {
        let share = share.map(str::parse::<Share>).transpose()?;
        let mask = mask.map(str::parse::<MaskKind>).transpose()?;
        let combine = combine.map(str::parse::<Combine>).transpose()?;
        if let Some(k) = keep {
            vocab::check_keep(k).map_err(config_error)?;
        }
        let structure = Structure {
            share: share.map(Share::name),
            mask: mask.map(MaskKind::name),
            combine: combine.map(Combine::name),
            keep: keep.is_some(),
        };
        if let Some(p) = structure.check().into_iter().next() {
            return Err(config_error(p));
        }
        let c = Self {
            keep: keep.unwrap_or_else(|| method.default_keep()),
            method,
            share: structure.share().parse()?,
            mask: structure.mask().parse()?,
            combine: structure.combine().parse()?,
        };
        c.validate()?;
        Ok(c)
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

    /// The structure as the vocabulary's rules see it. Every stored field counts as given,
    /// except `combine` when it is the default (a stored default is what the attribute fills
    /// in when `combine` is left out); `keep` counts as given when `keep_given`.
    pub fn structure(&self, keep_given: bool) -> Structure<'static> {
        Structure {
            share: Some(self.share.name()),
            mask: Some(self.mask.name()),
            combine: (self.combine != Combine::DEFAULT).then(|| self.combine.name()),
            keep: keep_given,
        }
    }

    /// Check ranges and combinations with the attribute's rules and messages: `keep` in
    /// (0, 1], sizes ≥ 1, finite numbers, LoRA targets, no binary mask on `share = none`,
    /// and a `combine` other than the default only with `share = layers+tasks` and binary
    /// masks. The stored `keep` of a configuration without masks is ignored, not an error
    /// (every configuration stores one); a `keep` override of one is rejected by
    /// [`NumericOverrides::apply`](crate::NumericOverrides::apply).
    pub fn validate(&self) -> Result<()> {
        vocab::check_keep(self.keep).map_err(config_error)?;
        if let Some(p) = self.structure(false).check().into_iter().next() {
            return Err(config_error(p));
        }
        self.method.check().map_err(config_error)
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

/// A vocabulary problem as a configuration error.
pub(crate) fn config_error(p: vocab::Problem) -> PetlError {
    PetlError::config(p.message)
}

/// Names, `Display` and `FromStr` of an enum from a vocabulary list (variants in its order).
macro_rules! named_enum {
    ($ty:ident, $names:expr, [$($v:ident),+ $(,)?]) => {
        impl $ty {
            /// Every variant, in the order of the vocabulary's list.
            pub const ALL: &'static [$ty] = &[$($ty::$v),+];

            /// The name the attribute and configuration files use.
            pub const fn name(self) -> &'static str {
                $names.all[self as usize]
            }
        }

        const _: () = assert!($ty::ALL.len() == $names.all.len());

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = PetlError;
            /// Unknown names get the attribute's "did you mean" message.
            fn from_str(s: &str) -> Result<Self> {
                $names.find(s).map(|i| Self::ALL[i]).map_err(PetlError::config)
            }
        }
    };
}

named_enum!(Share, vocab::SHARE, [None, Layers, Tasks, LayersTasks]);
named_enum!(MaskKind, vocab::MASK, [Binary, None]);
named_enum!(Combine, vocab::COMBINE, [Or, And, Add]);
named_enum!(Activation, vocab::ACTIVATION, [Relu, GeluNew, Gelu]);
named_enum!(LoraTarget, vocab::TARGET, [Q, K, V, O]);

impl Share {
    /// The default sharing mode (`layers`).
    pub const DEFAULT: Share = Share::ALL[vocab::index_of(vocab::SHARES, defaults::SHARE)];
}

impl MaskKind {
    /// The mask kind when none is given: `none` for the unshared baseline, else `binary`.
    pub fn default_for(share: Share) -> MaskKind {
        defaults::mask(share.name())
            .parse()
            .expect("the default mask is a mask name")
    }
}

impl Combine {
    /// The default combination (`or`).
    pub const DEFAULT: Combine = Combine::ALL[vocab::index_of(vocab::COMBINES, defaults::COMBINE)];
}

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
