//! Compile time and run time agree: the names the `#[propetl]` attribute accepts parse at run
//! time, unknown names fail with its "did you mean" text, and the combinations and values it
//! rejects are run-time errors with the same messages. Where the attribute's message is
//! snapshotted (`tests/ui/fail/*.stderr` of the workspace), the run-time message is checked
//! to be exactly that snapshotted line.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;

use propetl_runtime::{
    Activation, AdapterSize, Combine, LoraTarget, MaskKind, Method, NumericOverrides, PetlConfig,
    PetlError, Share,
};
use propetl_vocab::{self as vocab, MethodKind, Structure};

/// Every `error: …` line of the attribute's compile-fail snapshots.
fn snapshot_errors() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/ui/fail");
    let mut out = vec![];
    for entry in std::fs::read_dir(&dir).expect("the workspace's UI snapshots") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "stderr") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("error: "))
                    .map(String::from),
            );
        }
    }
    assert!(!out.is_empty());
    out
}

/// The message of a configuration error.
fn message<T: std::fmt::Debug>(r: Result<T, PetlError>) -> String {
    match r {
        Err(PetlError::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

fn names_round_trip<T>(names: &[&str], all: &[T])
where
    T: FromStr<Err = PetlError>
        + std::fmt::Display
        + serde::Serialize
        + PartialEq
        + std::fmt::Debug,
{
    assert_eq!(names.len(), all.len());
    for (name, v) in names.iter().zip(all) {
        let parsed: T = name.parse().unwrap();
        assert_eq!(&parsed, v, "{name}");
        assert_eq!(v.to_string(), *name);
        // manifests and run configurations (serde) spell it the same
        assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{name}\""));
    }
}

#[test]
fn every_name_the_attribute_accepts_parses_at_run_time() {
    names_round_trip(vocab::SHARES, Share::ALL);
    names_round_trip(vocab::MASKS, MaskKind::ALL);
    names_round_trip(vocab::COMBINES, Combine::ALL);
    names_round_trip(vocab::ACTIVATIONS, Activation::ALL);
    names_round_trip(vocab::TARGETS, LoraTarget::ALL);
    for (i, name) in vocab::METHODS.iter().enumerate() {
        let m = Method::paper(name).unwrap();
        assert_eq!(m.name(), *name);
        assert_eq!(m.kind(), MethodKind::ALL[i]);
        // serde's tag is the method name too
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["kind"], *name);
    }
}

#[test]
fn unknown_names_get_the_attribute_text() {
    let snap = snapshot_errors();
    for msg in [
        message("layer".parse::<Share>()),
        message("binray".parse::<MaskKind>()),
        message("xor".parse::<Combine>()),
        message("gelu-new".parse::<Activation>()),
        message("value".parse::<LoraTarget>()),
    ] {
        assert!(snap.contains(&msg), "not the attribute's message: {msg}");
    }
    assert_eq!(
        message(Method::paper("adaptor")),
        "unknown method `adaptor`; did you mean `adapter`? (expected one of: `adapter`, `lora`, `prefix`)"
    );
    assert_eq!(
        message(PetlConfig::from_names(
            Method::LORA,
            Some("task"),
            None,
            None,
            None
        )),
        vocab::SHARE.unknown("task")
    );
}

#[test]
fn rejected_structures_and_values_have_the_attribute_messages() {
    let snap = snapshot_errors();
    let pro = PetlConfig::pro(Method::ADAPTER);
    let lora = |r, targets: &'static [LoraTarget]| {
        PetlConfig::pro(Method::Lora {
            r,
            alpha: 48.0,
            targets: Cow::Borrowed(targets),
        })
    };
    let cases = [
        // keep outside (0, 1]
        message(pro.clone().with_keep(0.0).validate()),
        message(pro.clone().with_keep(1.5).validate()),
        message(
            NumericOverrides {
                keep: Some(1.5),
                ..Default::default()
            }
            .apply(&pro),
        ),
        // keep with mask = "none"
        message(PetlConfig::from_names(
            Method::ADAPTER,
            None,
            Some("none"),
            None,
            Some(0.5),
        )),
        // mask = "binary" on share = "none"
        message(
            PetlConfig {
                mask: MaskKind::Binary,
                ..PetlConfig::unshared(Method::ADAPTER)
            }
            .validate(),
        ),
        message(PetlConfig::from_names(
            Method::ADAPTER,
            Some("none"),
            Some("binary"),
            None,
            None,
        )),
        // combine without layers+tasks
        message(PetlConfig::from_names(
            Method::ADAPTER,
            Some("layers"),
            None,
            Some("or"),
            None,
        )),
        // sizes
        message(lora(0, &[LoraTarget::Q]).validate()),
        message(lora(8, &[]).validate()),
        message(
            PetlConfig::pro(Method::Prefix {
                length: 0,
                hidden: 8,
            })
            .validate(),
        ),
        message(
            PetlConfig::pro(Method::Adapter {
                size: AdapterSize::Bottleneck(0),
                activation: Activation::Relu,
                init_std: 0.02,
            })
            .validate(),
        ),
        message(
            NumericOverrides {
                reduction: Some(12),
                bottleneck: Some(64),
                ..Default::default()
            }
            .apply(&pro),
        ),
    ];
    for msg in cases {
        assert!(snap.contains(&msg), "not the attribute's message: {msg}");
    }
}

#[test]
fn keep_on_a_config_without_masks_is_a_run_time_error() {
    let keep = NumericOverrides {
        keep: Some(0.5),
        ..Default::default()
    };
    for m in [Method::ADAPTER, Method::LORA, Method::PREFIX] {
        let unshared = PetlConfig::unshared(m.clone());
        let msg = message(keep.apply(&unshared));
        assert!(msg.starts_with("run-time override `keep = 0.5`: `keep` has no effect: share = \"none\" (the unshared baseline) has no masks"), "{msg}");
        let ablation = PetlConfig {
            mask: MaskKind::None,
            ..PetlConfig::pro(m.clone())
        };
        let msg = message(keep.apply(&ablation));
        assert!(msg.ends_with("`keep` has no effect: mask = \"none\" has no masks; remove `keep`"));
        // the same through the structural constructor
        assert!(PetlConfig::from_names(m.clone(), Some("none"), None, None, Some(0.5)).is_err());
        // a stored keep is no override: the baselines themselves are valid
        unshared.validate().unwrap();
        ablation.validate().unwrap();
        assert!(keep.apply(&PetlConfig::pro(m)).is_ok());
    }
}

#[test]
fn run_time_structures_agree_with_the_attribute() {
    // every structure the attribute could be given: accepted at run time exactly when the
    // vocabulary's rules accept it, with the defaults the attribute fills in
    let opt = |names: &'static [&'static str]| {
        std::iter::once(None).chain(names.iter().map(|n| Some(*n)))
    };
    let mut accepted = 0;
    for share in opt(vocab::SHARES) {
        for mask in opt(vocab::MASKS) {
            for combine in opt(vocab::COMBINES) {
                for keep in [None, Some(0.25)] {
                    let s = Structure {
                        share,
                        mask,
                        combine,
                        keep: keep.is_some(),
                    };
                    let problems = s.check();
                    let r = PetlConfig::from_names(Method::LORA, share, mask, combine, keep);
                    match (&r, problems.first()) {
                        (Ok(c), None) => {
                            accepted += 1;
                            assert_eq!(c.share.name(), s.share());
                            assert_eq!(c.mask.name(), s.mask());
                            assert_eq!(c.combine.name(), s.combine());
                            assert_eq!(c.keep, keep.unwrap_or(0.1));
                            // what the attribute emits passes run-time validation (manifests)
                            c.validate().unwrap();
                        }
                        (Err(PetlError::Config(m)), Some(p)) => assert_eq!(*m, p.message),
                        _ => panic!("disagreement on {s:?}: {r:?} vs {problems:?}"),
                    }
                }
            }
        }
    }
    assert!(accepted > 20, "{accepted}");
    // the attribute's defaults
    assert_eq!(
        PetlConfig::from_names(Method::LORA, None, None, None, None).unwrap(),
        PetlConfig::pro(Method::LORA)
    );
    assert_eq!(
        PetlConfig::from_names(Method::PREFIX, Some("none"), None, None, None).unwrap(),
        PetlConfig::unshared(Method::PREFIX)
    );
}

#[test]
fn stored_combine_is_checked_when_not_the_default() {
    let pro = PetlConfig::pro(Method::ADAPTER);
    for combine in [Combine::And, Combine::Add] {
        let c = PetlConfig {
            combine,
            ..pro.clone()
        };
        assert!(message(c.validate()).starts_with("`combine` merges task masks"));
        let c = PetlConfig {
            combine,
            share: Share::LayersTasks,
            mask: MaskKind::None,
            ..pro.clone()
        };
        assert_eq!(
            message(c.validate()),
            "`combine` has no effect with mask = \"none\""
        );
        let c = PetlConfig {
            combine,
            ..pro.clone().with_share(Share::LayersTasks)
        };
        c.validate().unwrap();
    }
    // the default is what every configuration stores: never an error
    for share in Share::ALL {
        pro.clone().with_share(*share).validate().unwrap();
    }
}

#[test]
fn paper_defaults_come_from_the_vocabulary() {
    use propetl_vocab::defaults;
    assert_eq!(
        Method::ADAPTER,
        Method::Adapter {
            size: AdapterSize::Reduction(defaults::ADAPTER_REDUCTION),
            activation: defaults::ADAPTER_ACTIVATION.parse().unwrap(),
            init_std: defaults::ADAPTER_INIT_STD,
        }
    );
    let targets: Vec<LoraTarget> = defaults::LORA_TARGETS
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(
        Method::LORA,
        Method::Lora {
            r: defaults::LORA_R,
            alpha: defaults::LORA_ALPHA,
            targets: targets.into(),
        }
    );
    assert_eq!(
        Method::PREFIX,
        Method::Prefix {
            length: defaults::PREFIX_LENGTH,
            hidden: defaults::PREFIX_HIDDEN,
        }
    );
    for m in [Method::ADAPTER, Method::LORA, Method::PREFIX] {
        assert_eq!(m.default_keep(), m.kind().default_keep());
        assert_eq!(m.default_mask_lr(), m.kind().default_mask_lr());
        assert_eq!(PetlConfig::pro(m.clone()).keep, m.default_keep());
    }
    assert_eq!(
        (
            Method::ADAPTER.default_mask_lr(),
            Method::LORA.default_mask_lr(),
            Method::PREFIX.default_mask_lr()
        ),
        (3e-3, 3e-2, 1e-4)
    );
    assert_eq!(Share::DEFAULT.name(), defaults::SHARE);
    assert_eq!(Combine::DEFAULT.name(), defaults::COMBINE);
    assert_eq!(MaskKind::default_for(Share::None), MaskKind::None);
    assert_eq!(MaskKind::default_for(Share::Tasks), MaskKind::Binary);
}
