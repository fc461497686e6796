//! Fuzz the PETL state loader (see `fuzz/README.md`).

#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use libfuzzer_sys::fuzz_target;
use propetl_runtime::mask::kept_count;
use propetl_runtime::{
    Activation, AdapterSize, LoadedState, LoraTarget, Manifest, Method, PetlConfig, PetlLayout,
    PetlRng, PetlState, Share,
};

struct Reference {
    config: PetlConfig,
    bytes: Vec<u8>,
    fingerprint: Fingerprint,
}

/// Everything a loaded state holds, bit for bit.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    manifest: Manifest,
    stored: BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
    hard_masks: BTreeMap<String, Vec<u32>>,
    extra: BTreeMap<String, Vec<u32>>,
}

fn layout() -> PetlLayout {
    PetlLayout::single_task(16, 2, 3).with_tasks(["rte", "sst2"])
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// The fingerprint of a loaded state; checks its invariants on the way: every mask keeps
/// `kept_count(n, keep)` entries, every value is finite, and it saves again.
fn fingerprint(l: &LoadedState) -> Fingerprint {
    let keep = l.manifest.config.keep;
    let hard_masks: BTreeMap<_, _> = l
        .state
        .hard_masks()
        .expect("hard masks of a loaded state")
        .iter()
        .map(|(k, t)| (k.clone(), f32_bits(t)))
        .collect();
    for (name, m) in &hard_masks {
        let ones = m.iter().filter(|&&b| b == 1f32.to_bits()).count();
        let zeros = m.iter().filter(|&&b| b == 0f32.to_bits()).count();
        assert_eq!(ones + zeros, m.len(), "mask `{name}` is not 0/1");
        assert_eq!(ones, kept_count(m.len(), keep), "mask `{name}` keep count");
    }
    let extra: BTreeMap<_, _> = l
        .extra
        .iter()
        .map(|(k, t)| (k.clone(), f32_bits(t)))
        .collect();
    for (name, v) in &extra {
        assert!(
            v.iter().all(|b| f32::from_bits(*b).is_finite()),
            "`{name}` not finite"
        );
    }
    let (_, bytes) = l
        .state
        .save_to_bytes(&l.extra, l.manifest.storage.backbone_params)
        .expect("a loaded state saves again");
    let stored = safetensors::SafeTensors::deserialize(&bytes)
        .expect("re-saved file parses")
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let dtype = format!("{:?}", v.dtype());
            (k, (dtype, v.shape().to_vec(), v.data().to_vec()))
        })
        .collect();
    Fingerprint {
        manifest: l.manifest.clone(),
        stored,
        hard_masks,
        extra,
    }
}

fn references() -> &'static [Reference] {
    static REFS: OnceLock<Vec<Reference>> = OnceLock::new();
    REFS.get_or_init(|| {
        let adapter = Method::Adapter {
            size: AdapterSize::Reduction(4),
            activation: Activation::Relu,
            init_std: 0.1,
        };
        let configs = [
            PetlConfig::pro(adapter.clone()).with_share(Share::Layers),
            PetlConfig::pro(Method::Lora {
                r: 4,
                alpha: 8.0,
                targets: std::borrow::Cow::Borrowed(&[LoraTarget::Q, LoraTarget::V]),
            })
            .with_share(Share::LayersTasks)
            .with_keep(0.3),
            PetlConfig::pro(Method::Prefix {
                length: 3,
                hidden: 8,
            })
            .with_keep(0.7),
            PetlConfig::unshared(adapter),
        ];
        let head = BTreeMap::from([(
            "head.out_proj.weight".to_string(),
            Tensor::new(&[[0.5f32, -1.0, 3.25], [2.0, 0.25, -0.125]], &Device::Cpu).unwrap(),
        )]);
        configs
            .into_iter()
            .enumerate()
            .map(|(i, config)| {
                let vm = VarMap::new();
                let mut rng = PetlRng::seed(40 + i as u64);
                let state = PetlState::new(&config, &layout(), &vm, &mut rng, &Device::Cpu)
                    .expect("reference state");
                let (_, bytes) = state.save_to_bytes(&head, 1000).expect("reference saves");
                let loaded = PetlState::load_from_bytes(&bytes, &config, &layout(), &Device::Cpu)
                    .expect("reference loads");
                Reference {
                    fingerprint: fingerprint(&loaded),
                    config,
                    bytes,
                }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let refs = references();
    let r = &refs[(mode as usize >> 1) % refs.len()];
    let (input, single_edit) = if mode & 1 == 0 {
        (rest.to_vec(), false)
    } else {
        let mut m = r.bytes.clone();
        let edits = rest.chunks_exact(4);
        let tail = edits.remainder();
        let n_edits = edits.len();
        for e in edits {
            let at = u32::from_le_bytes([e[0], e[1], e[2], 0]) as usize % m.len();
            m[at] ^= e[3];
        }
        let mut changes = n_edits;
        if !tail.is_empty() {
            let cut = tail.iter().fold(0usize, |a, &b| a << 8 | b as usize) % m.len();
            m.truncate(cut);
            changes += 1;
        }
        (m, changes == 1)
    };
    match PetlState::load_from_bytes(&input, &r.config, &layout(), &Device::Cpu) {
        Err(_) => {}
        Ok(loaded) => {
            let fp = fingerprint(&loaded);
            // whatever loads round-trips exactly
            let (_, again) = loaded
                .state
                .save_to_bytes(&loaded.extra, loaded.manifest.storage.backbone_params)
                .expect("saves again");
            let reloaded = PetlState::load_from_bytes(&again, &r.config, &layout(), &Device::Cpu)
                .expect("a re-saved state loads");
            // (a version 1 file comes back as version 2 with a recomputed storage report)
            let model = |f: &Fingerprint| {
                (
                    f.stored.clone(),
                    f.hard_masks.clone(),
                    f.extra.clone(),
                    f.manifest.config.clone(),
                    f.manifest.layout.clone(),
                )
            };
            assert!(
                model(&fingerprint(&reloaded)) == model(&fp),
                "save/load is not a fixed point"
            );
            if single_edit {
                assert!(
                    fp == r.fingerprint,
                    "a single edit loaded a different model"
                );
            }
        }
    }
});
