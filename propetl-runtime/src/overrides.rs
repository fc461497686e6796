//! Run-time overrides of a compile-time spec (keep ratio, sizes, mask combination).
//!
//! Overrides are checked with the attribute's rules (`propetl-vocab`): an override the
//! attribute would reject, such as `keep` on a configuration without masks, is an error here.

use propetl_vocab as vocab;
use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};
use crate::spec::{config_error, AdapterSize, Combine, Method, PetlConfig};

/// Hyper-parameters a run-time (training) configuration may override: the numbers, and the
/// combination of task and layer masks (a choice among equals for `share = "layers+tasks"`);
/// the structure (method, sharing, mask kind) stays what the attribute fixed at compile time.
/// Field names are the attribute's keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericOverrides {
    /// Keep ratio.
    pub keep: Option<f64>,
    /// Adapter reduction factor.
    pub reduction: Option<usize>,
    /// Adapter bottleneck width.
    pub bottleneck: Option<usize>,
    /// Adapter init standard deviation.
    pub init_std: Option<f64>,
    /// LoRA rank.
    pub r: Option<usize>,
    /// LoRA alpha.
    pub alpha: Option<f64>,
    /// Prefix length.
    pub length: Option<usize>,
    /// Prefix MLP width.
    pub hidden: Option<usize>,
    /// Combination of task and layer masks (`or`, `and`, `add`; only with
    /// `share = "layers+tasks"` and binary masks).
    pub combine: Option<Combine>,
}

impl NumericOverrides {
    /// The keys of the overrides that are set.
    pub fn given(&self) -> Vec<&'static str> {
        [
            ("keep", self.keep.is_some()),
            ("reduction", self.reduction.is_some()),
            ("bottleneck", self.bottleneck.is_some()),
            ("init_std", self.init_std.is_some()),
            ("r", self.r.is_some()),
            ("alpha", self.alpha.is_some()),
            ("length", self.length.is_some()),
            ("hidden", self.hidden.is_some()),
            ("combine", self.combine.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// Apply to a configuration. Errors, with the attribute's messages, when an override
    /// does not belong to the method, when both `reduction` and `bottleneck` are given, when
    /// `keep` is given to a configuration without masks (`share = none` or `mask = none`),
    /// or when the result is invalid ([`PetlConfig::validate`]).
    pub fn apply(&self, base: &PetlConfig) -> Result<PetlConfig> {
        let kind = base.method.kind();
        if let Some(key) = self
            .given()
            .into_iter()
            .find(|k| !matches!(*k, "keep" | "combine") && !kind.options().contains(k))
        {
            return Err(PetlError::config(format!(
                "run-time override `{key}` does not apply to {} (its options: {})",
                kind.name(),
                kind.options().join(", ")
            )));
        }
        vocab::check_size_choice(self.reduction.is_some(), self.bottleneck.is_some())
            .map_err(config_error)?;
        let mut c = base.clone();
        if let Some(k) = self.keep {
            vocab::check_keep(k).map_err(config_error)?;
            if let Some(p) = base.structure(true).check().into_iter().next() {
                return Err(PetlError::config(format!(
                    "run-time override `keep = {k}`: {}",
                    p.message
                )));
            }
            c.keep = k;
        }
        if let Some(how) = self.combine {
            let given = vocab::Structure {
                combine: Some(how.name()),
                ..base.structure(false)
            };
            if let Some(p) = given.check().into_iter().next() {
                return Err(PetlError::config(format!(
                    "run-time override `combine = \"{}\"`: {}",
                    how.name(),
                    p.message
                )));
            }
            c.combine = how;
        }
        match &mut c.method {
            Method::Adapter { size, init_std, .. } => {
                if let Some(r) = self.reduction {
                    *size = AdapterSize::Reduction(r);
                }
                if let Some(b) = self.bottleneck {
                    *size = AdapterSize::Bottleneck(b);
                }
                if let Some(s) = self.init_std {
                    *init_std = s;
                }
            }
            Method::Lora { r, alpha, .. } => {
                if let Some(x) = self.r {
                    *r = x;
                }
                if let Some(x) = self.alpha {
                    *alpha = x;
                }
            }
            Method::Prefix { length, hidden } => {
                if let Some(x) = self.length {
                    *length = x;
                }
                if let Some(x) = self.hidden {
                    *hidden = x;
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MaskKind, Share};

    fn keep(k: f64) -> NumericOverrides {
        NumericOverrides {
            keep: Some(k),
            ..Default::default()
        }
    }

    fn err(r: Result<PetlConfig>) -> String {
        r.expect_err("must be rejected").to_string()
    }

    #[test]
    fn overrides_apply_to_their_method() {
        let o = NumericOverrides {
            keep: Some(0.3),
            r: Some(4),
            alpha: Some(8.0),
            ..Default::default()
        };
        let c = o.apply(&PetlConfig::pro(Method::LORA)).unwrap();
        assert_eq!(c.keep, 0.3);
        assert!(matches!(c.method, Method::Lora { r: 4, alpha, .. } if alpha == 8.0));
        let e = err(o.apply(&PetlConfig::pro(Method::ADAPTER)));
        assert!(e.contains("`r` does not apply to adapter"), "{e}");
        let both = NumericOverrides {
            reduction: Some(4),
            bottleneck: Some(8),
            ..Default::default()
        };
        let e = err(both.apply(&PetlConfig::pro(Method::ADAPTER)));
        assert!(
            e.contains("give either `reduction` or `bottleneck`, not both"),
            "{e}"
        );
        let zero = NumericOverrides {
            length: Some(0),
            ..Default::default()
        };
        let e = err(zero.apply(&PetlConfig::pro(Method::PREFIX)));
        assert!(e.ends_with("prefix `length` must be at least 1"), "{e}");
    }

    #[test]
    fn keep_needs_masks() {
        let e = err(keep(0.5).apply(&PetlConfig::unshared(Method::ADAPTER)));
        assert_eq!(e, "invalid ProPETL configuration: run-time override `keep = 0.5`: `keep` has no effect: share = \"none\" (the unshared baseline) has no masks; remove `keep`");
        let mut ablation = PetlConfig::pro(Method::LORA);
        ablation.mask = MaskKind::None;
        let e = err(keep(0.5).apply(&ablation));
        assert!(e.ends_with("`keep` has no effect: mask = \"none\" has no masks; remove `keep`"));
        // without a keep override the unshared baseline and the ablation are fine
        assert!(NumericOverrides::default()
            .apply(&PetlConfig::unshared(Method::ADAPTER))
            .is_ok());
        assert!(NumericOverrides::default().apply(&ablation).is_ok());
        for share in [Share::Layers, Share::Tasks, Share::LayersTasks] {
            let c = PetlConfig::pro(Method::PREFIX).with_share(share);
            assert_eq!(keep(0.25).apply(&c).unwrap().keep, 0.25);
        }
    }

    #[test]
    fn combine_overrides_multi_task_masks_only() {
        let multi = PetlConfig::pro(Method::ADAPTER).with_share(Share::LayersTasks);
        for how in [Combine::Or, Combine::And, Combine::Add] {
            let o = NumericOverrides {
                combine: Some(how),
                ..Default::default()
            };
            assert_eq!(o.apply(&multi).unwrap().combine, how);
        }
        let and = NumericOverrides {
            combine: Some(Combine::And),
            ..Default::default()
        };
        let e = err(and.apply(&PetlConfig::pro(Method::ADAPTER)));
        assert!(
            e.contains("run-time override `combine = \"and\"`: `combine` merges task masks with layer masks and needs share = \"layers+tasks\""),
            "{e}"
        );
        let e = err(and.apply(&PetlConfig::unshared(Method::ADAPTER)));
        assert!(e.contains("needs share = \"layers+tasks\""), "{e}");
        // TOML/JSON spelling: the attribute's names
        let parsed: NumericOverrides = serde_json::from_str(r#"{"combine": "add"}"#).unwrap();
        assert_eq!(parsed.combine, Some(Combine::Add));
    }

    #[test]
    fn keep_range() {
        for bad in [0.0, -1.0, 1.5, f64::NAN] {
            let e = err(keep(bad).apply(&PetlConfig::pro(Method::ADAPTER)));
            assert!(e.contains("must lie in (0, 1]"), "{e}");
        }
        assert_eq!(
            keep(1.0)
                .apply(&PetlConfig::pro(Method::ADAPTER))
                .unwrap()
                .keep,
            1.0
        );
    }
}
