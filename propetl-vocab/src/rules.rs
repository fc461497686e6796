//! The rules of a description: which combinations and values are rejected, which key is to
//! blame, and the message. The attribute reports a [`Problem`] at the blamed key's tokens;
//! the runtime returns it as a configuration error.

use std::fmt;

use crate::{defaults, TARGET, TARGETS};

/// A rejected choice: the key to blame and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key whose value (or presence) is wrong: `mask`, `keep`, `combine`, `r`, …
    pub key: &'static str,
    /// The message, worded for the attribute (the runtime uses it as is).
    pub message: String,
}

impl Problem {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

/// The structural keys of a description as given: `None` (or `keep: false`) when a key is
/// left out and its default applies. Names are assumed to be valid names of their lists.
///
/// At run time, where every field is stored, a key counts as given when it may differ from
/// what the attribute would fill in: `share` and `mask` always, `combine` when it is not the
/// default, `keep` when it is overridden.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Structure<'a> {
    /// `share = "…"`.
    pub share: Option<&'a str>,
    /// `mask = "…"`.
    pub mask: Option<&'a str>,
    /// `combine = "…"`.
    pub combine: Option<&'a str>,
    /// Whether `keep` is given.
    pub keep: bool,
}

impl<'a> Structure<'a> {
    /// The sharing mode, given or default.
    pub fn share(&self) -> &'a str {
        self.share.unwrap_or(defaults::SHARE)
    }

    /// The mask kind, given or default for the sharing mode.
    pub fn mask(&self) -> &'a str {
        self.mask.unwrap_or_else(|| defaults::mask(self.share()))
    }

    /// The combination, given or default.
    pub fn combine(&self) -> &'a str {
        self.combine.unwrap_or(defaults::COMBINE)
    }

    /// Every structural problem, in the order mask, keep, combine:
    /// - `mask = "binary"` with `share = "none"` (the unshared baseline has no masks);
    /// - `keep` without masks (`share = "none"` or `mask = "none"`);
    /// - `combine` without `share = "layers+tasks"`, or with `mask = "none"`.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = vec![];
        let (share, mask) = (self.share(), self.mask());
        let unshared = share == "none";
        if unshared && self.mask == Some("binary") {
            out.push(Problem::new(
                "mask",
                "share = \"none\" is the unshared baseline and has no masks: drop `mask = \"binary\"` or share the prototype (share = \"layers\")",
            ));
        }
        if self.keep && mask == "none" {
            let why = if unshared {
                "share = \"none\" (the unshared baseline) has no masks"
            } else {
                "mask = \"none\" has no masks"
            };
            out.push(Problem::new(
                "keep",
                format!("`keep` has no effect: {why}; remove `keep`"),
            ));
        }
        if self.combine.is_some() {
            if share != "layers+tasks" {
                out.push(Problem::new("combine", format!("`combine` merges task masks with layer masks and needs share = \"layers+tasks\" (share is \"{share}\")")));
            } else if mask == "none" {
                out.push(Problem::new(
                    "combine",
                    "`combine` has no effect with mask = \"none\"",
                ));
            }
        }
        out
    }
}

/// `keep` must lie in (0, 1].
pub fn check_keep(keep: f64) -> Result<(), Problem> {
    if keep > 0.0 && keep <= 1.0 {
        Ok(())
    } else {
        Err(Problem::new("keep", format!("`keep` is the fraction of prototype entries a mask keeps and must lie in (0, 1], got {keep}")))
    }
}

/// The integer sizes [`check_size`] knows.
pub const SIZE_KEYS: &[&str] = &["reduction", "bottleneck", "r", "length", "hidden"];

/// A size (adapter `reduction`/`bottleneck`, LoRA `r`, prefix `length`/`hidden`) must be at
/// least 1. Panics when `key` is not one of [`SIZE_KEYS`].
pub fn check_size(key: &'static str, value: usize) -> Result<(), Problem> {
    if value >= 1 {
        return Ok(());
    }
    let message = match key {
        "reduction" | "bottleneck" => format!("adapter `{key}` must be at least 1"),
        "r" => "LoRA rank `r` must be at least 1".to_string(),
        "length" | "hidden" => format!("prefix `{key}` must be at least 1"),
        other => panic!("`{other}` is not a size key"),
    };
    Err(Problem::new(key, message))
}

/// An adapter takes `reduction` or `bottleneck`, not both.
pub fn check_size_choice(reduction: bool, bottleneck: bool) -> Result<(), Problem> {
    if reduction && bottleneck {
        Err(Problem::new(
            "bottleneck",
            "give either `reduction` or `bottleneck`, not both: the bottleneck is hidden / reduction",
        ))
    } else {
        Ok(())
    }
}

/// The adapter's `init_std` must be finite and non-negative.
pub fn check_init_std(init_std: f64) -> Result<(), Problem> {
    if init_std >= 0.0 && init_std.is_finite() {
        Ok(())
    } else {
        Err(Problem::new(
            "init_std",
            "`init_std` must be a non-negative number",
        ))
    }
}

/// LoRA's `alpha` must be finite.
pub fn check_alpha(alpha: f64) -> Result<(), Problem> {
    if alpha.is_finite() {
        Ok(())
    } else {
        Err(Problem::new(
            "alpha",
            "LoRA `alpha` must be a finite number",
        ))
    }
}

/// A LoRA target given after the (valid) targets `earlier`: a known name, not repeated.
pub fn check_target<S: AsRef<str>>(target: &str, earlier: &[S]) -> Result<(), Problem> {
    if !TARGET.contains(target) {
        return Err(Problem::new("targets", TARGET.unknown(target)));
    }
    if earlier.iter().any(|t| t.as_ref() == target) {
        return Err(Problem::new(
            "targets",
            format!("duplicate LoRA target `{target}`"),
        ));
    }
    Ok(())
}

/// LoRA targets: at least one, each known, none repeated.
pub fn check_targets<S: AsRef<str>>(targets: &[S]) -> Result<(), Problem> {
    if targets.is_empty() {
        return Err(Problem::new(
            "targets",
            format!(
                "LoRA needs at least one target, e.g. targets = [\"q\", \"v\"] (one of: {})",
                TARGETS.join(", ")
            ),
        ));
    }
    for (i, t) in targets.iter().enumerate() {
        check_target(t.as_ref(), &targets[..i])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(s: Structure) -> Vec<&'static str> {
        s.check().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn defaults_fill_in_the_structure() {
        let s = Structure::default();
        assert_eq!(
            (s.share(), s.mask(), s.combine()),
            ("layers", "binary", "or")
        );
        let s = Structure {
            share: Some("none"),
            ..Structure::default()
        };
        assert_eq!(s.mask(), "none");
        assert!(s.check().is_empty());
    }

    #[test]
    fn valid_structures_pass() {
        for share in crate::SHARES {
            for keep in [false, true] {
                let s = Structure {
                    share: Some(share),
                    keep: keep && *share != "none",
                    ..Structure::default()
                };
                assert!(s.check().is_empty(), "{s:?}");
            }
        }
        let s = Structure {
            share: Some("layers+tasks"),
            combine: Some("add"),
            keep: true,
            ..Structure::default()
        };
        assert!(s.check().is_empty());
        let s = Structure {
            mask: Some("none"),
            ..Structure::default()
        };
        assert!(s.check().is_empty());
    }

    #[test]
    fn binary_mask_on_the_unshared_baseline() {
        let p = Structure {
            share: Some("none"),
            mask: Some("binary"),
            ..Structure::default()
        }
        .check();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "mask");
        assert_eq!(p[0].message, "share = \"none\" is the unshared baseline and has no masks: drop `mask = \"binary\"` or share the prototype (share = \"layers\")");
        // with the binary mask, keep is not the problem
        assert_eq!(
            keys(Structure {
                share: Some("none"),
                mask: Some("binary"),
                keep: true,
                ..Structure::default()
            }),
            ["mask"]
        );
    }

    #[test]
    fn keep_without_masks() {
        let p = Structure {
            share: Some("none"),
            keep: true,
            ..Structure::default()
        }
        .check();
        assert_eq!(p[0].key, "keep");
        assert_eq!(
            p[0].message,
            "`keep` has no effect: share = \"none\" (the unshared baseline) has no masks; remove `keep`"
        );
        let p = Structure {
            mask: Some("none"),
            keep: true,
            ..Structure::default()
        }
        .check();
        assert_eq!(
            p[0].message,
            "`keep` has no effect: mask = \"none\" has no masks; remove `keep`"
        );
    }

    #[test]
    fn combine_needs_layers_and_tasks_with_masks() {
        let p = Structure {
            combine: Some("or"),
            ..Structure::default()
        }
        .check();
        assert_eq!(p[0].key, "combine");
        assert_eq!(p[0].message, "`combine` merges task masks with layer masks and needs share = \"layers+tasks\" (share is \"layers\")");
        let p = Structure {
            share: Some("layers+tasks"),
            mask: Some("none"),
            combine: Some("and"),
            ..Structure::default()
        }
        .check();
        assert_eq!(p[0].message, "`combine` has no effect with mask = \"none\"");
        // every problem at once, in order
        assert_eq!(
            keys(Structure {
                share: Some("tasks"),
                mask: Some("none"),
                combine: Some("and"),
                keep: true,
            }),
            ["keep", "combine"]
        );
    }

    #[test]
    fn keep_range() {
        assert!(check_keep(1.0).is_ok() && check_keep(1e-6).is_ok());
        for bad in [0.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            assert_eq!(check_keep(bad).unwrap_err().key, "keep");
        }
        assert_eq!(
            check_keep(1.5).unwrap_err().message,
            "`keep` is the fraction of prototype entries a mask keeps and must lie in (0, 1], got 1.5"
        );
        assert!(check_keep(0.0).unwrap_err().message.ends_with("got 0"));
    }

    #[test]
    fn sizes_and_numbers() {
        for k in SIZE_KEYS {
            assert!(check_size(k, 1).is_ok());
            assert_eq!(check_size(k, 0).unwrap_err().key, *k);
        }
        assert_eq!(
            check_size("bottleneck", 0).unwrap_err().message,
            "adapter `bottleneck` must be at least 1"
        );
        assert_eq!(
            check_size("r", 0).unwrap_err().message,
            "LoRA rank `r` must be at least 1"
        );
        assert_eq!(
            check_size("length", 0).unwrap_err().message,
            "prefix `length` must be at least 1"
        );
        assert!(check_size_choice(true, false).is_ok());
        assert!(check_size_choice(true, true).is_err());
        assert!(check_init_std(0.0).is_ok());
        assert!(check_init_std(-0.1).is_err() && check_init_std(f64::NAN).is_err());
        assert!(check_alpha(-3.0).is_ok() && check_alpha(f64::INFINITY).is_err());
    }

    #[test]
    fn lora_targets() {
        assert!(check_targets(&["q", "v"]).is_ok());
        assert!(check_targets::<&str>(&[])
            .unwrap_err()
            .message
            .starts_with("LoRA needs at least one target"));
        assert_eq!(
            check_targets(&["q", "k", "q"]).unwrap_err().message,
            "duplicate LoRA target `q`"
        );
        assert!(check_targets(&["q", "value"])
            .unwrap_err()
            .message
            .contains("did you mean `v`?"));
        assert!(check_target("v", &["q".to_string()]).is_ok());
    }
}
