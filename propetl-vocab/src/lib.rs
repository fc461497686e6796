//! The ProPETL vocabulary: method, share, mask and combine names, the paper's defaults and
//! the structural rules of a description.
//!
//! One place for both sides: the `#[propetl]` attribute checks its tokens with it at compile
//! time, the runtime checks run-time configs, overrides and manifests with it, so both accept
//! the same descriptions and reject the others with the same words.
//!
//! Dependency-free and string-based. The runtime's enums map to these names by position:
//! `SHARES[i]` names the `i`-th variant of `Share`, and so on.
//!
//! ```
//! use propetl_vocab::{Structure, SHARE};
//!
//! assert_eq!(SHARE.find("layers+tasks"), Ok(3));
//! assert!(SHARE.find("layer").unwrap_err().contains("did you mean `layers`?"));
//! // keep on the unshared baseline is rejected, naming the key to blame
//! let s = Structure { share: Some("none"), keep: true, ..Structure::default() };
//! assert_eq!(s.check()[0].key, "keep");
//! ```

mod rules;
mod suggest;

pub use rules::{
    check_alpha, check_init_std, check_keep, check_size, check_size_choice, check_target,
    check_targets, Problem, Structure, SIZE_KEYS,
};
pub use suggest::{closest, unknown};

/// PETL methods.
pub const METHODS: &[&str] = &["adapter", "lora", "prefix"];
/// The attribute's keys besides the method.
pub const KEYS: &[&str] = &["share", "mask", "combine", "keep", "crate"];
/// Sharing modes, in the order of the runtime's `Share` variants.
pub const SHARES: &[&str] = &["none", "layers", "tasks", "layers+tasks"];
/// Mask kinds, in the order of `MaskKind`.
pub const MASKS: &[&str] = &["binary", "none"];
/// Task/layer mask combinations, in the order of `Combine`.
pub const COMBINES: &[&str] = &["or", "and", "add"];
/// Adapter activations, in the order of `Activation`.
pub const ACTIVATIONS: &[&str] = &["relu", "gelu_new", "gelu"];
/// LoRA target projections, in the order of `LoraTarget`.
pub const TARGETS: &[&str] = &["q", "k", "v", "o"];
/// Options of `adapter(...)`.
pub const ADAPTER_KEYS: &[&str] = &["reduction", "bottleneck", "activation", "init_std"];
/// Options of `lora(...)`.
pub const LORA_KEYS: &[&str] = &["r", "alpha", "targets"];
/// Options of `prefix(...)`.
pub const PREFIX_KEYS: &[&str] = &["length", "hidden"];
/// Field attributes: `#[propetl(layers)]`, `#[propetl(state)]`.
pub const FIELD_ATTRS: &[&str] = &["layers", "state"];

/// A closed list of names and what they name, for lookups with "did you mean" errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// What the names are, as messages say it (`share`, `LoRA target`).
    pub what: &'static str,
    /// Every accepted name.
    pub all: &'static [&'static str],
}

impl Names {
    /// The position of `word`, or the "unknown … did you mean" message.
    pub fn find(&self, word: &str) -> Result<usize, String> {
        self.all
            .iter()
            .position(|n| *n == word)
            .ok_or_else(|| self.unknown(word))
    }

    /// Whether `word` is one of the names.
    pub fn contains(&self, word: &str) -> bool {
        self.all.contains(&word)
    }

    /// ``unknown {what} `{word}`; did you mean …``.
    pub fn unknown(&self, word: &str) -> String {
        unknown(self.what, word, self.all)
    }
}

/// PETL methods.
pub const METHOD: Names = Names {
    what: "method",
    all: METHODS,
};
/// Sharing modes.
pub const SHARE: Names = Names {
    what: "share",
    all: SHARES,
};
/// Mask kinds.
pub const MASK: Names = Names {
    what: "mask",
    all: MASKS,
};
/// Mask combinations.
pub const COMBINE: Names = Names {
    what: "combine",
    all: COMBINES,
};
/// Adapter activations.
pub const ACTIVATION: Names = Names {
    what: "activation",
    all: ACTIVATIONS,
};
/// LoRA targets.
pub const TARGET: Names = Names {
    what: "LoRA target",
    all: TARGETS,
};

/// The position of `name` in `names`, usable in constants; panics (a compile error in a
/// constant) when it is missing.
pub const fn index_of(names: &[&str], name: &str) -> usize {
    let mut i = 0;
    while i < names.len() {
        let (a, b) = (names[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("name not in the list")
}

/// A PETL method, without its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    /// `adapter`.
    Adapter,
    /// `lora`.
    Lora,
    /// `prefix`.
    Prefix,
}

impl MethodKind {
    /// Every method, in the order of [`METHODS`].
    pub const ALL: [MethodKind; 3] = [MethodKind::Adapter, MethodKind::Lora, MethodKind::Prefix];

    /// `adapter`, `lora` or `prefix`.
    pub const fn name(self) -> &'static str {
        METHODS[self as usize]
    }

    /// The method of a name, or the "unknown method … did you mean" message.
    pub fn parse(name: &str) -> Result<Self, String> {
        METHOD.find(name).map(|i| Self::ALL[i])
    }

    /// The keys of `method(...)`.
    pub const fn options(self) -> &'static [&'static str] {
        match self {
            MethodKind::Adapter => ADAPTER_KEYS,
            MethodKind::Lora => LORA_KEYS,
            MethodKind::Prefix => PREFIX_KEYS,
        }
    }

    /// The paper's keep ratio (method page §3): adapter 0.5, LoRA and prefix 0.1.
    pub const fn default_keep(self) -> f64 {
        match self {
            MethodKind::Adapter => 0.5,
            MethodKind::Lora | MethodKind::Prefix => 0.1,
        }
    }

    /// The paper's mask-score learning rate (method page §3).
    pub const fn default_mask_lr(self) -> f64 {
        match self {
            MethodKind::Adapter => 3e-3,
            MethodKind::Lora => 3e-2,
            MethodKind::Prefix => 1e-4,
        }
    }
}

/// The paper's defaults of everything a description may leave out.
pub mod defaults {
    /// Sharing mode: one prototype for all layers.
    pub const SHARE: &str = "layers";
    /// Combination of task and layer masks.
    pub const COMBINE: &str = "or";
    /// Adapter reduction factor (bottleneck = hidden / 12).
    pub const ADAPTER_REDUCTION: usize = 12;
    /// Adapter activation.
    pub const ADAPTER_ACTIVATION: &str = "relu";
    /// Standard deviation of the adapter's N(0, σ) init.
    pub const ADAPTER_INIT_STD: f64 = 0.02;
    /// LoRA rank.
    pub const LORA_R: usize = 32;
    /// LoRA alpha.
    pub const LORA_ALPHA: f64 = 48.0;
    /// LoRA target projections.
    pub const LORA_TARGETS: [&str; 2] = ["q", "v"];
    /// Prefix length.
    pub const PREFIX_LENGTH: usize = 64;
    /// Hidden width of the prefix MLP.
    pub const PREFIX_HIDDEN: usize = 512;

    /// The mask kind when none is given: `none` for the unshared baseline, else `binary`.
    pub fn mask(share: &str) -> &'static str {
        if share == "none" {
            "none"
        } else {
            "binary"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_with_suggestions() {
        assert_eq!(SHARE.find("layers+tasks"), Ok(3));
        assert_eq!(MASK.find("none"), Ok(1));
        assert_eq!(
            COMBINE.find("xor"),
            Err(
                "unknown combine `xor`; did you mean `or`? (expected one of: `or`, `and`, `add`)"
                    .into()
            )
        );
        assert!(TARGET
            .find("value")
            .unwrap_err()
            .starts_with("unknown LoRA target `value`"));
        assert!(ACTIVATION.contains("gelu_new") && !ACTIVATION.contains("gelu-new"));
    }

    #[test]
    fn index_of_works_in_constants() {
        const I: usize = index_of(SHARES, defaults::SHARE);
        assert_eq!(I, 1);
        assert_eq!(index_of(ACTIVATIONS, "gelu"), 2);
        assert_eq!(index_of(TARGETS, "v"), 2);
    }

    #[test]
    #[should_panic(expected = "name not in the list")]
    fn index_of_panics_on_missing_names() {
        index_of(SHARES, "layer");
    }

    #[test]
    fn methods_and_their_defaults() {
        for (i, m) in MethodKind::ALL.into_iter().enumerate() {
            assert_eq!(m.name(), METHODS[i]);
            assert_eq!(MethodKind::parse(m.name()), Ok(m));
        }
        assert!(MethodKind::parse("adaptor")
            .unwrap_err()
            .contains("did you mean `adapter`?"));
        assert_eq!(MethodKind::Adapter.default_keep(), 0.5);
        assert_eq!(MethodKind::Lora.default_keep(), 0.1);
        assert_eq!(MethodKind::Prefix.default_keep(), 0.1);
        assert_eq!(MethodKind::Adapter.default_mask_lr(), 3e-3);
        assert_eq!(MethodKind::Lora.default_mask_lr(), 3e-2);
        assert_eq!(MethodKind::Prefix.default_mask_lr(), 1e-4);
        assert_eq!(MethodKind::Lora.options(), LORA_KEYS);
    }

    #[test]
    fn defaults_are_names_of_the_lists() {
        assert!(SHARE.contains(defaults::SHARE));
        assert!(COMBINE.contains(defaults::COMBINE));
        assert!(ACTIVATION.contains(defaults::ADAPTER_ACTIVATION));
        assert!(defaults::LORA_TARGETS.iter().all(|t| TARGET.contains(t)));
        for share in SHARES {
            assert!(MASK.contains(defaults::mask(share)));
        }
        assert_eq!(defaults::mask("none"), "none");
        assert_eq!(defaults::mask("layers+tasks"), "binary");
        assert_eq!(
            (defaults::ADAPTER_REDUCTION, defaults::ADAPTER_INIT_STD),
            (12, 0.02)
        );
        assert_eq!((defaults::LORA_R, defaults::LORA_ALPHA), (32, 48.0));
        assert_eq!(
            (defaults::PREFIX_LENGTH, defaults::PREFIX_HIDDEN),
            (64, 512)
        );
    }

    #[test]
    fn every_size_key_is_an_option() {
        for k in SIZE_KEYS {
            assert!(
                MethodKind::ALL.iter().any(|m| m.options().contains(k)),
                "{k}"
            );
        }
    }
}
