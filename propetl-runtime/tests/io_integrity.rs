//! Integrity of saved PETL states (issue 10, classes 4 and 5): checksums, mask keep counts,
//! non-finite values, and a seeded mutation fuzzer over the loader.
//!
//! The fuzzer saves a few small states, applies hundreds of seeded mutations (byte flips at
//! random offsets, truncations, flips inside the manifest, inside mask bytes and inside f32
//! data, garbage windows, appended bytes) and requires every load to be either an error or
//! a model whose stored tensors, hard masks, heads and manifest are bit-identical to the
//! original: never a different model, never a panic. Longer runs: `fuzz/` (cargo-fuzz).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl_runtime::io::{checksum, MANIFEST_CHECKSUM_KEY, MANIFEST_KEY, VERSION};
use propetl_runtime::mask::kept_count;
use propetl_runtime::*;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;

fn layout() -> PetlLayout {
    PetlLayout::single_task(16, 2, 3).with_tasks(["rte", "sst2"])
}

fn adapter() -> Method {
    Method::Adapter {
        size: AdapterSize::Reduction(4),
        activation: Activation::Relu,
        init_std: 0.1,
    }
}

fn lora() -> Method {
    Method::Lora {
        r: 4,
        alpha: 8.0,
        targets: std::borrow::Cow::Borrowed(&[LoraTarget::Q, LoraTarget::V]),
    }
}

fn prefix() -> Method {
    Method::Prefix {
        length: 3,
        hidden: 8,
    }
}

/// The fuzzed configurations: adapter share=layers, LoRA layers+tasks, prefix, unshared.
fn configs() -> Vec<(&'static str, PetlConfig)> {
    vec![
        (
            "adapter layers",
            PetlConfig::pro(adapter()).with_share(Share::Layers),
        ),
        (
            "lora layers+tasks",
            PetlConfig::pro(lora())
                .with_share(Share::LayersTasks)
                .with_keep(0.3),
        ),
        ("prefix", PetlConfig::pro(prefix()).with_keep(0.7)),
        (
            "adapter unshared",
            PetlConfig::unshared(adapter()).with_share(Share::None),
        ),
    ]
}

fn head() -> BTreeMap<String, Tensor> {
    BTreeMap::from([(
        "head.out_proj.weight".to_string(),
        Tensor::new(&[[0.5f32, -1.0, 3.25], [2.0, 0.25, -0.125]], &Device::Cpu).unwrap(),
    )])
}

/// A state with random (seeded) prototype values and scores.
fn state(cfg: &PetlConfig, seed: u64) -> PetlState {
    let vm = VarMap::new();
    let mut rng = PetlRng::seed(seed);
    let s = PetlState::new(cfg, &layout(), &vm, &mut rng, &Device::Cpu).unwrap();
    // LoRA's B (and the adapter biases) start at zero: give every prototype tensor values
    let values: BTreeMap<String, Tensor> = s
        .prototype_vars()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                rng.normal(v.dims(), 0.5, &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap(),
            )
        })
        .collect();
    s.set_values(&values).unwrap();
    s
}

fn saved_bytes(cfg: &PetlConfig, seed: u64) -> (PetlState, Vec<u8>) {
    let s = state(cfg, seed);
    let (_, bytes) = s.save_to_bytes(&head(), 1000).unwrap();
    (s, bytes)
}

fn bits(t: &Tensor) -> (Vec<usize>, Vec<u32>) {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (t.dims().to_vec(), v.into_iter().map(f32::to_bits).collect())
}

/// Everything a loaded state holds, bit for bit.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    manifest: Manifest,
    /// The stored tensors (prototype in stored form, packed masks, heads) as re-saved.
    stored: BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
    hard_masks: BTreeMap<String, (Vec<usize>, Vec<u32>)>,
    extra: BTreeMap<String, (Vec<usize>, Vec<u32>)>,
}

fn stored_tensors(bytes: &[u8]) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    SafeTensors::deserialize(bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (
                    format!("{:?}", v.dtype()),
                    v.shape().to_vec(),
                    v.data().to_vec(),
                ),
            )
        })
        .collect()
}

fn fingerprint(l: &LoadedState) -> Fingerprint {
    let (_, bytes) = l
        .state
        .save_to_bytes(&l.extra, l.manifest.storage.backbone_params)
        .unwrap();
    Fingerprint {
        manifest: l.manifest.clone(),
        stored: stored_tensors(&bytes),
        hard_masks: l
            .state
            .hard_masks()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), bits(t)))
            .collect(),
        extra: l.extra.iter().map(|(k, t)| (k.clone(), bits(t))).collect(),
    }
}

fn load(bytes: &[u8], cfg: &PetlConfig) -> Result<LoadedState> {
    PetlState::load_from_bytes(bytes, cfg, &layout(), &Device::Cpu)
}

fn load_kind(bytes: &[u8], cfg: &PetlConfig) -> LoadErrorKind {
    match load(bytes, cfg) {
        Err(PetlError::Load { kind, .. }) => kind,
        other => panic!("expected a load error, got {other:?}"),
    }
}

/// SplitMix64: a tiny seeded generator for the mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn in_range(&mut self, r: &std::ops::Range<usize>) -> usize {
        r.start + self.below(r.end - r.start)
    }
    /// A non-zero XOR pattern.
    fn flip(&mut self) -> u8 {
        1 + self.below(255) as u8
    }
}

/// Absolute byte ranges of the parts of a saved file.
struct Regions {
    header: std::ops::Range<usize>,
    /// The manifest's JSON string inside the header (escaped).
    manifest: std::ops::Range<usize>,
    masks: Vec<(String, std::ops::Range<usize>)>,
    floats: Vec<(String, std::ops::Range<usize>)>,
}

fn regions(bytes: &[u8]) -> Regions {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = 8..8 + n;
    let text = &bytes[header.clone()];
    let key = format!("\"{MANIFEST_KEY}\":\"");
    let start = text
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .expect("manifest key in the header")
        + key.len();
    let mut end = start;
    while text[end] != b'"' {
        end += if text[end] == b'\\' { 2 } else { 1 };
    }
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut masks = vec![];
    let mut floats = vec![];
    for (name, info) in meta.tensors() {
        let (s, e) = info.data_offsets;
        let r = header.end + s..header.end + e;
        match info.dtype {
            StDtype::U8 => masks.push((name, r)),
            _ => floats.push((name, r)),
        }
    }
    masks.sort_by(|a, b| a.0.cmp(&b.0));
    floats.sort_by(|a, b| a.0.cmp(&b.0));
    Regions {
        manifest: header.start + start..header.start + end,
        header,
        masks,
        floats,
    }
}

#[derive(Default, Debug)]
struct Tally {
    mutations: usize,
    identical: usize,
    kinds: BTreeMap<String, usize>,
}

/// What a mutation must give.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// An error or the identical model.
    ErrOrSame,
    /// An error.
    Err,
    /// A checksum error naming this tensor, or (mask padding bits) a mismatch naming it.
    ChecksumOf,
}

fn check(
    cfg: &PetlConfig,
    reference: &Fingerprint,
    mutated: &[u8],
    what: &str,
    expect: Expect,
    tensor: &str,
    tally: &mut Tally,
) {
    tally.mutations += 1;
    let out = catch_unwind(AssertUnwindSafe(|| {
        load(mutated, cfg).map(|l| fingerprint(&l))
    }));
    match out {
        Err(_) => panic!("the loader panicked on {what}"),
        Ok(Ok(fp)) => {
            assert!(
                expect == Expect::ErrOrSame,
                "{what} loaded without an error"
            );
            assert!(fp == *reference, "{what} loaded a different model");
            tally.identical += 1;
        }
        Ok(Err(PetlError::Load { kind, .. })) => {
            if expect == Expect::ChecksumOf {
                let named = match &kind {
                    LoadErrorKind::Checksum { name, .. }
                    | LoadErrorKind::TensorMismatch { name, .. } => name == tensor,
                    _ => false,
                };
                assert!(
                    named,
                    "{what}: expected an error naming `{tensor}`, got {kind}"
                );
            }
            let variant = format!("{kind:?}");
            let variant = variant
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap()
                .to_string();
            *tally.kinds.entry(variant).or_default() += 1;
        }
        Ok(Err(other)) => panic!("{what}: untyped error {other}"),
    }
}

#[test]
fn seeded_mutations_never_load_a_different_model() {
    let started = std::time::Instant::now();
    let mut total = Tally::default();
    for (ci, (label, cfg)) in configs().into_iter().enumerate() {
        let (original, bytes) = saved_bytes(&cfg, 40 + ci as u64);
        let reference = fingerprint(&load(&bytes, &cfg).unwrap());
        // the round trip itself is exact
        let (_, again) = original.save_to_bytes(&head(), 1000).unwrap();
        assert_eq!(stored_tensors(&again), reference.stored, "{label}");
        let masks: BTreeMap<_, _> = original
            .hard_masks()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), bits(t)))
            .collect();
        assert_eq!(masks, reference.hard_masks, "{label}");
        assert_eq!(masks.is_empty(), !cfg.is_masked(), "{label}");

        let reg = regions(&bytes);
        let mut rng = Rng(0x5eed_0000 + ci as u64);
        let mut tally = Tally::default();
        let run = |m: Vec<u8>, what: String, expect: Expect, tensor: &str, t: &mut Tally| {
            check(
                &cfg,
                &reference,
                &m,
                &format!("{label}: {what}"),
                expect,
                tensor,
                t,
            )
        };
        // byte flips anywhere
        for _ in 0..800 {
            let mut m = bytes.clone();
            let at = rng.below(m.len());
            let x = rng.flip();
            m[at] ^= x;
            run(
                m,
                format!("xor {x:#04x} at {at}"),
                Expect::ErrOrSame,
                "",
                &mut tally,
            );
        }
        // truncations
        for _ in 0..200 {
            let len = rng.below(bytes.len());
            run(
                bytes[..len].to_vec(),
                format!("truncated to {len}"),
                Expect::Err,
                "",
                &mut tally,
            );
        }
        // appended bytes
        for k in 1..=4 {
            let mut m = bytes.clone();
            m.extend(std::iter::repeat_n(0u8, k));
            run(
                m,
                format!("{k} bytes appended"),
                Expect::Err,
                "",
                &mut tally,
            );
        }
        // flips inside the manifest text, and elsewhere in the header
        for _ in 0..400 {
            let mut m = bytes.clone();
            let at = rng.in_range(&reg.manifest);
            let x = rng.flip();
            m[at] ^= x;
            run(
                m,
                format!("manifest xor {x:#04x} at {at}"),
                Expect::Err,
                "",
                &mut tally,
            );
        }
        for _ in 0..200 {
            let mut m = bytes.clone();
            let at = rng.in_range(&reg.header);
            m[at] ^= 1 << rng.below(8);
            run(
                m,
                format!("header bit at {at}"),
                Expect::ErrOrSame,
                "",
                &mut tally,
            );
        }
        // single bit flips inside mask bytes
        if !reg.masks.is_empty() {
            for _ in 0..300 {
                let (name, r) = &reg.masks[rng.below(reg.masks.len())];
                let mut m = bytes.clone();
                let at = rng.in_range(r);
                let bit = rng.below(8);
                m[at] ^= 1 << bit;
                run(
                    m,
                    format!("mask `{name}` bit {bit} of byte {at}"),
                    Expect::ChecksumOf,
                    name,
                    &mut tally,
                );
            }
        }
        // bit flips inside f32 data (prototype and head)
        for _ in 0..300 {
            let (name, r) = &reg.floats[rng.below(reg.floats.len())];
            let mut m = bytes.clone();
            let at = rng.in_range(r);
            let bit = rng.below(8);
            m[at] ^= 1 << bit;
            run(
                m,
                format!("f32 `{name}` bit {bit} of byte {at}"),
                Expect::ChecksumOf,
                name,
                &mut tally,
            );
        }
        // windows of garbage
        for _ in 0..200 {
            let mut m = bytes.clone();
            let at = rng.below(m.len());
            let len = (1 + rng.below(16)).min(m.len() - at);
            for b in &mut m[at..at + len] {
                *b ^= rng.flip();
            }
            run(
                m,
                format!("{len} garbage bytes at {at}"),
                Expect::ErrOrSame,
                "",
                &mut tally,
            );
        }
        // the header's alignment padding (spaces) as other JSON whitespace: the same model
        let padding = (reg.header.start..reg.header.end)
            .rev()
            .take_while(|&i| bytes[i] == b' ')
            .collect::<Vec<_>>();
        for &at in &padding {
            for ws in [b'\t', b'\n', b'\r'] {
                let mut m = bytes.clone();
                m[at] = ws;
                run(
                    m,
                    format!("padding {ws:#04x} at {at}"),
                    Expect::ErrOrSame,
                    "",
                    &mut tally,
                );
            }
        }
        if !padding.is_empty() {
            assert!(tally.identical >= 3 * padding.len(), "{label}: {tally:?}");
        }
        println!("{label}: {tally:?}");
        total.mutations += tally.mutations;
        total.identical += tally.identical;
        for (k, v) in tally.kinds {
            *total.kinds.entry(k).or_default() += v;
        }
    }
    println!(
        "{} mutations in {:.2?}: {} loaded the identical model, errors {:?}",
        total.mutations,
        started.elapsed(),
        total.identical,
        total.kinds
    );
    assert!(total.mutations >= 8000, "{}", total.mutations);
    assert!(total.kinds.get("Checksum").copied().unwrap_or(0) > 3000);
}

// ---- targeted corruptions ----

fn adapter_cfg() -> PetlConfig {
    configs()[0].1.clone()
}

fn lora_cfg() -> PetlConfig {
    configs()[1].1.clone()
}

fn region<'a>(
    regs: &'a [(String, std::ops::Range<usize>)],
    name: &str,
) -> &'a std::ops::Range<usize> {
    &regs.iter().find(|(n, _)| n == name).unwrap().1
}

/// The tensors of a file: name → (dtype, shape, bytes).
type Tensors = BTreeMap<String, (StDtype, Vec<usize>, Vec<u8>)>;

/// Rewrite a saved file: edit its tensors and manifest, then (optionally) record fresh
/// checksums of the tensors and of the manifest, as a consistent forgery or a buggy writer
/// would. `resign = false` keeps the recorded checksums.
fn rewrite(
    bytes: &[u8],
    resign: bool,
    edit: impl FnOnce(&mut Tensors, &mut serde_json::Value),
) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&meta[MANIFEST_KEY]).unwrap();
    let mut tensors: BTreeMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors, &mut manifest);
    if resign && manifest.get("checksums").is_some() {
        manifest["checksums"] = tensors
            .iter()
            .map(|(k, (_, _, d))| (k.clone(), serde_json::Value::from(checksum(d))))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let json = manifest.to_string();
    let mut new_meta = std::collections::HashMap::from([(MANIFEST_KEY.to_string(), json.clone())]);
    if let Some(old) = meta.get(MANIFEST_CHECKSUM_KEY) {
        let crc = if resign {
            checksum(json.as_bytes())
        } else {
            old.clone()
        };
        new_meta.insert(MANIFEST_CHECKSUM_KEY.to_string(), crc);
    }
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize(views, Some(new_meta)).unwrap()
}

/// A new value of mask entry `i` given its current value.
type BitEdit = dyn Fn(usize, bool) -> bool;

fn set_bits(packed: &mut [u8], n: usize, f: impl Fn(usize, bool) -> bool) {
    for i in 0..n {
        let on = packed[i / 8] >> (i % 8) & 1 == 1;
        if f(i, on) {
            packed[i / 8] |= 1 << (i % 8);
        } else {
            packed[i / 8] &= !(1 << (i % 8));
        }
    }
}

fn mask_len(cfg: &PetlConfig, name: &str) -> usize {
    let plan = Plan::new(cfg, &layout()).unwrap();
    plan.scores
        .iter()
        .find(|s| s.name == name)
        .unwrap()
        .shape
        .iter()
        .product()
}

#[test]
fn inverted_all_ones_and_flipped_masks_are_rejected() {
    for (cfg, name) in [
        (adapter_cfg(), "mask.1.down"),
        (lora_cfg(), "mask.task.sst2.v.B"),
        (lora_cfg(), "mask.2.q.A"),
    ] {
        let (_, bytes) = saved_bytes(&cfg, 7);
        let n = mask_len(&cfg, name);
        let edits: [(&str, Box<BitEdit>); 3] = [
            ("inverted", Box::new(|_, on| !on)),
            ("all ones", Box::new(|_, _| true)),
            (
                "one bit flipped",
                Box::new(move |i, on| if i == n / 3 { !on } else { on }),
            ),
        ];
        for (what, f) in &edits {
            // in place: the recorded checksum catches it
            let mut m = bytes.clone();
            let r = region(&regions(&bytes).masks, name).clone();
            set_bits(&mut m[r], n, f);
            match load_kind(&m, &cfg) {
                LoadErrorKind::Checksum { name: got, .. } => assert_eq!(got, name, "{what}"),
                other => panic!("{what} {name}: {other}"),
            }
            // with fresh checksums (a forgery, or a writer bug) the kept count still catches
            // it, unless the edit keeps the count (inverting a mask at keep 0.5)
            let forged = rewrite(&bytes, true, |t, _| {
                set_bits(&mut t.get_mut(name).unwrap().2, n, f)
            });
            let keep = cfg.keep;
            let count_kept = *what == "inverted" && kept_count(n, keep) * 2 == n;
            if count_kept {
                assert!(load(&forged, &cfg).is_ok());
                continue;
            }
            match load_kind(&forged, &cfg) {
                LoadErrorKind::MaskCount {
                    name: got,
                    entries,
                    expected,
                    found,
                    ..
                } => {
                    assert_eq!((got.as_str(), entries), (name, n), "{what}");
                    assert_eq!(expected, kept_count(n, keep));
                    assert_ne!(found, expected);
                }
                other => panic!("{what} {name} (forged): {other}"),
            }
        }
    }
}

#[test]
fn flipped_prototype_and_head_bytes_are_checksum_errors() {
    let cfg = adapter_cfg();
    let (_, bytes) = saved_bytes(&cfg, 8);
    let regs = regions(&bytes);
    for name in [
        "adapter.down.weight",
        "adapter.up.bias",
        "head.out_proj.weight",
    ] {
        let r = region(&regs.floats, name);
        let mut m = bytes.clone();
        m[r.start + 4] ^= 0x01; // lowest mantissa bit of the second value
        match load_kind(&m, &cfg) {
            LoadErrorKind::Checksum {
                name: got,
                expected,
                found,
            } => {
                assert_eq!(got, name);
                assert_ne!(expected, found);
                assert_eq!(found.len(), 8);
            }
            other => panic!("{name}: {other}"),
        }
    }
    // the prefix is stored as its materialized output
    let cfg = configs()[2].1.clone();
    let (_, bytes) = saved_bytes(&cfg, 8);
    let r = region(&regions(&bytes).floats, "prefix.ejected").clone();
    let mut m = bytes.clone();
    m[r.end - 1] ^= 0x80;
    assert!(matches!(
        load_kind(&m, &cfg),
        LoadErrorKind::Checksum { name, .. } if name == "prefix.ejected"
    ));
}

#[test]
fn tampered_manifest_keep_is_rejected() {
    let cfg = lora_cfg(); // keep 0.3
    let (_, bytes) = saved_bytes(&cfg, 9);
    // in place: `"keep":0.3` → `"keep":0.4` inside the stored manifest text
    let pattern = br#"\"keep\":0.3"#;
    let at = bytes
        .windows(pattern.len())
        .position(|w| w == pattern)
        .expect("keep in the manifest");
    let mut m = bytes.clone();
    m[at + pattern.len() - 1] = b'4';
    match load_kind(&m, &cfg) {
        LoadErrorKind::Checksum { name, .. } => assert_eq!(name, MANIFEST_KEY),
        other => panic!("{other}"),
    }
    // re-signed manifest: the masks were binarized at keep 0.3, the manifest says 0.4
    let forged = rewrite(&bytes, true, |_, man| man["config"]["keep"] = 0.4.into());
    match load_kind(&forged, &cfg) {
        LoadErrorKind::MaskCount {
            keep,
            expected,
            found,
            entries,
            ..
        } => {
            assert_eq!(keep, 0.4);
            assert_eq!(found, kept_count(entries, 0.3));
            assert_eq!(expected, kept_count(entries, 0.4));
        }
        other => panic!("{other}"),
    }
    // keep out of range in a re-signed manifest is a manifest error, not a config error
    let forged = rewrite(&bytes, true, |_, man| man["config"]["keep"] = 1.5.into());
    assert!(matches!(
        load_kind(&forged, &cfg),
        LoadErrorKind::BadManifest(_)
    ));
}

#[test]
fn manifest_lists_and_checksums_must_match_the_tensors() {
    let cfg = adapter_cfg();
    let (_, bytes) = saved_bytes(&cfg, 10);
    // a mask missing from the manifest's list
    let forged = rewrite(&bytes, true, |_, man| {
        man["masks"].as_object_mut().unwrap().remove("mask.0.up");
    });
    assert!(
        matches!(load_kind(&forged, &cfg), LoadErrorKind::BadManifest(m) if m.contains("mask.0.up"))
    );
    // a prototype shape edited in the manifest
    let forged = rewrite(&bytes, true, |_, man| {
        man["prototype"]["adapter.down.bias"] = serde_json::json!([2, 2]);
    });
    assert!(matches!(
        load_kind(&forged, &cfg),
        LoadErrorKind::BadManifest(_)
    ));
    // an extra tensor named like a PETL tensor
    let forged = rewrite(&bytes, true, |_, man| {
        man["extra"]["adapter.down.bias"] = serde_json::json!([4]);
    });
    assert!(
        matches!(load_kind(&forged, &cfg), LoadErrorKind::BadManifest(m) if m.contains("clashes"))
    );
    // a tensor without a recorded checksum
    let forged = rewrite(&bytes, false, |_, man| {
        man["checksums"]
            .as_object_mut()
            .unwrap()
            .remove("adapter.up.weight");
    });
    let forged = resign_manifest_only(&forged);
    assert!(
        matches!(load_kind(&forged, &cfg), LoadErrorKind::BadManifest(m) if m.contains("adapter.up.weight"))
    );
    // a version 2 file without the manifest checksum
    let stripped = strip_manifest_checksum(&bytes);
    assert!(
        matches!(load_kind(&stripped, &cfg), LoadErrorKind::BadManifest(m) if m.contains(MANIFEST_CHECKSUM_KEY))
    );
    // the manifest checksum itself edited
    let mut m = bytes.clone();
    let crc = &SafeTensors::read_metadata(&bytes)
        .unwrap()
        .1
        .metadata()
        .clone()
        .unwrap()[MANIFEST_CHECKSUM_KEY];
    let at = bytes
        .windows(crc.len())
        .position(|w| w == crc.as_bytes())
        .unwrap();
    m[at] = if m[at] == b'0' { b'1' } else { b'0' };
    assert!(
        matches!(load_kind(&m, &cfg), LoadErrorKind::Checksum { name, .. } if name == MANIFEST_KEY)
    );
    // the untouched file loads, from bytes as from a path
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let a = fingerprint(&PetlState::load(&path, &cfg, &layout(), &Device::Cpu).unwrap());
    assert_eq!(a, fingerprint(&load(&bytes, &cfg).unwrap()));
    assert_eq!(a.manifest.version, VERSION);
    assert_eq!(a.manifest.checksums.len(), a.stored.len());
}

/// Record a fresh manifest checksum, leaving the tensor checksums as they are.
fn resign_manifest_only(bytes: &[u8]) -> Vec<u8> {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let json = meta.metadata().as_ref().unwrap()[MANIFEST_KEY].clone();
    rewrite_meta(bytes, |m| {
        m.insert(MANIFEST_CHECKSUM_KEY.to_string(), checksum(json.as_bytes()));
    })
}

fn strip_manifest_checksum(bytes: &[u8]) -> Vec<u8> {
    rewrite_meta(bytes, |m| {
        m.remove(MANIFEST_CHECKSUM_KEY);
    })
}

fn rewrite_meta(
    bytes: &[u8],
    edit: impl FnOnce(&mut std::collections::HashMap<String, String>),
) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    edit(&mut meta);
    let tensors = st.tensors();
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                TensorView::new(v.dtype(), v.shape().to_vec(), v.data()).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, Some(meta)).unwrap()
}

#[test]
fn version_1_files_are_read_with_every_check_but_checksums() {
    let cfg = lora_cfg();
    let (_, bytes) = saved_bytes(&cfg, 11);
    let to_v1 = |edit: &dyn Fn(&mut Tensors)| {
        strip_manifest_checksum(&rewrite(&bytes, false, |t, man| {
            edit(t);
            man["version"] = 1.into();
            man.as_object_mut().unwrap().remove("checksums");
        }))
    };
    let v1 = to_v1(&|_| {});
    let a = fingerprint(&load(&v1, &cfg).unwrap());
    let b = fingerprint(&load(&bytes, &cfg).unwrap());
    assert_eq!(
        (a.stored, a.hard_masks, a.extra),
        (b.stored, b.hard_masks, b.extra)
    );
    assert_eq!(a.manifest.version, 1);
    // an all-ones mask in a version 1 file: the kept count catches it
    let name = "mask.1.v.A";
    let n = mask_len(&cfg, name);
    let bad = to_v1(&|t| set_bits(&mut t.get_mut(name).unwrap().2, n, |_, _| true));
    assert!(
        matches!(load_kind(&bad, &cfg), LoadErrorKind::MaskCount { name: got, .. } if got == name)
    );
    // NaN in a version 1 file
    let bad =
        to_v1(&|t| t.get_mut("lora.q.B").unwrap().2[..4].copy_from_slice(&f32::NAN.to_le_bytes()));
    assert!(
        matches!(load_kind(&bad, &cfg), LoadErrorKind::NonFinite { name } if name == "lora.q.B")
    );
    // a version 2 file edited to say version 1 still carries checksums: rejected
    let downgraded = rewrite(&bytes, true, |_, man| man["version"] = 1.into());
    assert!(matches!(
        load_kind(&downgraded, &cfg),
        LoadErrorKind::BadManifest(_)
    ));
    // unknown versions
    for v in [0u64, VERSION as u64 + 1, u64::MAX] {
        let bad = rewrite(&bytes, true, |_, man| man["version"] = v.into());
        assert!(
            matches!(load_kind(&bad, &cfg), LoadErrorKind::UnsupportedVersion { supported, .. } if supported == VERSION),
            "{v}"
        );
    }
}

#[test]
fn non_finite_values_are_refused_at_save_and_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = adapter_cfg();
    let s = state(&cfg, 12);
    let path = dir.path().join("s.safetensors");
    // NaN in the head
    let mut bad_head = head();
    bad_head.insert(
        "head.out_proj.bias".into(),
        Tensor::new(&[0.0f32, f32::NAN], &Device::Cpu).unwrap(),
    );
    match s.save(&path, &bad_head, 1000) {
        Err(PetlError::NonFinite { name }) => assert_eq!(name, "head.out_proj.bias"),
        other => panic!("{other:?}"),
    }
    assert!(!path.exists(), "nothing is written");
    // an f64 head that overflows f32
    let big = BTreeMap::from([(
        "head.big".to_string(),
        Tensor::new(&[1e300f64, 1.0], &Device::Cpu).unwrap(),
    )]);
    assert!(
        matches!(s.save(&path, &big, 1000), Err(PetlError::NonFinite { name }) if name == "head.big")
    );
    // infinity in a prototype tensor
    s.set_values(&BTreeMap::from([(
        "adapter.up.bias".to_string(),
        Tensor::full(f32::INFINITY, 16, &Device::Cpu).unwrap(),
    )]))
    .unwrap();
    match s.save(&path, &head(), 1000) {
        Err(PetlError::NonFinite { name }) => assert_eq!(name, "adapter.up.bias"),
        other => panic!("{other:?}"),
    }
    assert!(!path.exists());
    // a prefix whose MLP output is NaN
    let pcfg = configs()[2].1.clone();
    let p = state(&pcfg, 12);
    p.set_values(&BTreeMap::from([(
        "prefix.mlp2.bias".to_string(),
        Tensor::full(f32::NAN, 32, &Device::Cpu).unwrap(),
    )]))
    .unwrap();
    assert!(
        matches!(p.save(&path, &head(), 1000), Err(PetlError::NonFinite { name }) if name == "prefix.ejected")
    );
    // at load: NaN written by a forger who also recorded fresh checksums
    let (_, bytes) = saved_bytes(&cfg, 12);
    for (name, value) in [
        ("adapter.down.bias", f32::NAN),
        ("head.out_proj.weight", f32::NEG_INFINITY),
    ] {
        let forged = rewrite(&bytes, true, |t, _| {
            t.get_mut(name).unwrap().2[4..8].copy_from_slice(&value.to_le_bytes())
        });
        match load_kind(&forged, &cfg) {
            LoadErrorKind::NonFinite { name: got } => assert_eq!(got, name),
            other => panic!("{name}: {other}"),
        }
    }
}
