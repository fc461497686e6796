//! The paper's variants by name: ProPETL (`pro_adapter`, `pro_lora`, `pro_prefix`), the
//! unshared baselines (`adapter`, `lora`, `prefix`) and full fine-tuning (`full`, the paper's
//! other reference row: no PETL module, every backbone weight trains). A model family maps
//! each variant it supports to one of its types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};

/// A variant: a method, shared with masks (ProPETL) or unshared (the baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Variant {
    /// One adapter shared by all layers, per-layer masks.
    ProAdapter,
    /// One LoRA prototype per target shared by all layers, per-layer masks.
    ProLora,
    /// One prefix shared by all layers, per-layer masks.
    ProPrefix,
    /// One adapter per layer.
    Adapter,
    /// One LoRA pair per layer and target.
    Lora,
    /// One prefix per layer.
    Prefix,
    /// Full fine-tuning: no PETL module, every backbone weight trains (and is stored).
    Full,
}

impl Variant {
    /// All variants.
    pub const ALL: [Variant; 7] = [
        Variant::ProAdapter,
        Variant::ProLora,
        Variant::ProPrefix,
        Variant::Adapter,
        Variant::Lora,
        Variant::Prefix,
        Variant::Full,
    ];

    /// The six PETL variants (a frozen backbone and PETL modules): all but [`Variant::Full`].
    pub const PETL: [Variant; 6] = [
        Variant::ProAdapter,
        Variant::ProLora,
        Variant::ProPrefix,
        Variant::Adapter,
        Variant::Lora,
        Variant::Prefix,
    ];

    /// The snake-case name (`pro_adapter`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Variant::ProAdapter => "pro_adapter",
            Variant::ProLora => "pro_lora",
            Variant::ProPrefix => "pro_prefix",
            Variant::Adapter => "adapter",
            Variant::Lora => "lora",
            Variant::Prefix => "prefix",
            Variant::Full => "full",
        }
    }

    /// Whether this is a ProPETL (shared, masked) variant.
    pub fn is_pro(&self) -> bool {
        matches!(
            self,
            Variant::ProAdapter | Variant::ProLora | Variant::ProPrefix
        )
    }

    /// Whether the backbone itself trains (full fine-tuning): no PETL module, no PETL spec.
    pub fn is_full(&self) -> bool {
        matches!(self, Variant::Full)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = PetlError;
    fn from_str(s: &str) -> Result<Self> {
        let normalized = s.to_ascii_lowercase().replace('-', "_");
        let normalized = match normalized.as_str() {
            "proadapter" => "pro_adapter",
            "prolora" => "pro_lora",
            "proprefix" => "pro_prefix",
            other => other,
        }
        .to_string();
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == normalized)
            .ok_or_else(|| {
                let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
                PetlError::config(format!(
                    "unknown variant `{s}` (one of: {})",
                    names.join(", ")
                ))
            })
    }
}

impl TryFrom<String> for Variant {
    type Error = PetlError;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Variant> for String {
    fn from(v: Variant) -> String {
        v.name().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
        }
        assert_eq!(
            "ProAdapter".parse::<Variant>().unwrap(),
            Variant::ProAdapter
        );
        assert_eq!("Full".parse::<Variant>().unwrap(), Variant::Full);
        let e = "fulll".parse::<Variant>().unwrap_err().to_string();
        assert!(e.contains("pro_adapter") && e.contains("full"), "{e}");
        assert!(Variant::PETL.iter().all(|v| !v.is_full()));
    }
}
