//! Run-time numeric overrides of a compile-time spec (keep ratio, sizes).

use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};
use crate::spec::{AdapterSize, Method, PetlConfig};

/// Numeric hyper-parameters a run-time (training) configuration may override; the structure
/// (method, sharing, mask kind, combination) stays what the attribute fixed at compile time.
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
}

impl NumericOverrides {
    /// Apply to a configuration. Errors when an override does not belong to the method.
    pub fn apply(&self, base: &PetlConfig) -> Result<PetlConfig> {
        let mut c = base.clone();
        if let Some(k) = self.keep {
            c.keep = k;
        }
        let foreign = |what: &str| {
            PetlError::config(format!("`{what}` does not apply to {}", base.method.name()))
        };
        match &mut c.method {
            Method::Adapter { size, init_std, .. } => {
                if self.reduction.is_some() && self.bottleneck.is_some() {
                    return Err(PetlError::config(
                        "give either reduction or bottleneck, not both",
                    ));
                }
                if let Some(r) = self.reduction {
                    *size = AdapterSize::Reduction(r);
                }
                if let Some(b) = self.bottleneck {
                    *size = AdapterSize::Bottleneck(b);
                }
                if let Some(s) = self.init_std {
                    *init_std = s;
                }
                for (set, n) in [
                    (self.r.is_some() || self.alpha.is_some(), "r/alpha"),
                    (
                        self.length.is_some() || self.hidden.is_some(),
                        "length/hidden",
                    ),
                ] {
                    if set {
                        return Err(foreign(n));
                    }
                }
            }
            Method::Lora { r, alpha, .. } => {
                if let Some(x) = self.r {
                    *r = x;
                }
                if let Some(x) = self.alpha {
                    *alpha = x;
                }
                if self.reduction.is_some()
                    || self.bottleneck.is_some()
                    || self.init_std.is_some()
                    || self.length.is_some()
                    || self.hidden.is_some()
                {
                    return Err(foreign("adapter/prefix sizes"));
                }
            }
            Method::Prefix { length, hidden } => {
                if let Some(x) = self.length {
                    *length = x;
                }
                if let Some(x) = self.hidden {
                    *hidden = x;
                }
                if self.reduction.is_some()
                    || self.bottleneck.is_some()
                    || self.init_std.is_some()
                    || self.r.is_some()
                    || self.alpha.is_some()
                {
                    return Err(foreign("adapter/LoRA sizes"));
                }
            }
        }
        c.validate()?;
        Ok(c)
    }
}

