//! Integration tests of the PETL state: gradients reach every trainable tensor, frozen tensors
//! get none, masks keep the right counts, and save/load round-trips bit for bit with every
//! load error typed.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use propetl_runtime::mask::kept_count;
use propetl_runtime::*;

fn layout() -> PetlLayout {
    PetlLayout::single_task(16, 2, 3).with_tasks(["rte", "sst2"])
}

fn methods() -> Vec<Method> {
    vec![
        Method::Adapter {
            size: AdapterSize::Reduction(4),
            activation: Activation::Relu,
            init_std: 0.1,
        },
        Method::Lora {
            r: 4,
            alpha: 8.0,
            targets: std::borrow::Cow::Borrowed(&[LoraTarget::Q, LoraTarget::V]),
        },
        Method::Prefix {
            length: 3,
            hidden: 8,
        },
    ]
}

fn all_configs() -> Vec<PetlConfig> {
    let mut out = vec![];
    for m in methods() {
        for share in [Share::None, Share::Layers, Share::Tasks, Share::LayersTasks] {
            out.push(PetlConfig::pro(m.clone()).with_share(share).with_keep(0.5));
        }
        let mut ablation = PetlConfig::pro(m.clone()).with_keep(0.5);
        ablation.mask = MaskKind::None;
        out.push(ablation);
        for combine in [Combine::And, Combine::Add] {
            // keep 0.5: with `and` at keep 0.1 a LoRA A can be fully masked, which (correctly)
            // zeroes every gradient behind it
            let mut c = PetlConfig::pro(m.clone())
                .with_share(Share::LayersTasks)
                .with_keep(0.5);
            c.combine = combine;
            out.push(c);
        }
    }
    out
}

/// A toy masked network: a frozen base projection per layer plus the PETL module at its site.
fn toy_forward(
    state: &PetlState,
    base: &[Tensor],
    x: &Tensor,
    task: &str,
) -> candle_core::Result<Tensor> {
    let ctx = state.context(task).unwrap();
    let mut h = x.clone();
    for (l, w) in base.iter().enumerate() {
        let layer = ctx.layer(l);
        let mut q = ops::linear(&h, w, None)?;
        if let Some(d) = layer.lora_delta(LoraTarget::Q, &h).unwrap() {
            q = (q + d)?;
        }
        let mut v = h.clone();
        if let Some(d) = layer.lora_delta(LoraTarget::V, &h).unwrap() {
            v = (v + d)?;
        }
        let mut y = (q.tanh()? + v)?;
        if let Some((k, pv)) = layer.prefix_kv() {
            // attend from every position to the prefix keys
            let att = ops::softmax_last_dim(&y.broadcast_matmul(&k.t()?)?)?;
            y = (y + att.broadcast_matmul(pv)?)?;
        }
        if let Some(a) = layer.adapter(&y).unwrap() {
            y = (y + a)?;
        }
        h = ops::layer_norm(
            &y,
            &Tensor::ones(16, DType::F32, x.device())?,
            &Tensor::zeros(16, DType::F32, x.device())?,
            1e-5,
        )?;
    }
    Ok(h)
}

fn setup(cfg: &PetlConfig, seed: u64) -> (PetlState, VarMap, Vec<Tensor>, Tensor) {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let mut rng = PetlRng::seed(seed);
    let state = PetlState::new(cfg, &layout(), &vm, &mut rng, &dev).unwrap();
    // LoRA's B starts at zero, which zeroes every mask-score gradient: move it off zero.
    let mut kick = BTreeMap::new();
    for (name, var) in state.prototype_vars() {
        if name.ends_with(".B") {
            kick.insert(name, rng.normal(var.dims(), 0.3, &dev).unwrap());
        }
    }
    state.set_values(&kick).unwrap();
    let base: Vec<Tensor> = (0..3)
        .map(|_| rng.normal((16, 16), 0.3, &dev).unwrap())
        .collect();
    let x = rng.normal((2, 5, 16), 1.0, &dev).unwrap();
    (state, vm, base, x)
}

/// The largest absolute value of `t`.
fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar::<f32>())
        .unwrap()
}

fn target(dev: &Device) -> Tensor {
    PetlRng::seed(99).normal((2, 5, 16), 1.0, dev).unwrap()
}

#[test]
fn every_trainable_variable_gets_a_nonzero_gradient_and_frozen_ones_none() {
    for cfg in all_configs() {
        let (state, vm, base, x) = setup(&cfg, 3);
        let task = "sst2";
        let y = toy_forward(&state, &base, &x, task).unwrap();
        let loss = y
            .sub(&target(x.device()))
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = vm.data().lock().unwrap().clone();
        assert!(!vars.is_empty());
        let mut checked = 0;
        for (name, var) in &vars {
            // task masks of the other task are not used in this forward pass
            if name.contains(".rte.") {
                assert!(
                    grads.get(var.as_tensor()).is_none(),
                    "{}: unused task mask {name} got a gradient",
                    cfg.describe()
                );
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", cfg.describe()));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0, "{}: zero gradient for {name}", cfg.describe());
            checked += 1;
        }
        assert!(checked >= 3, "{}", cfg.describe());
        for w in &base {
            assert!(
                grads.get(w).is_none(),
                "frozen base tensor received a gradient"
            );
        }
        assert_eq!(state.score_vars().is_empty(), !cfg.is_masked());
    }
}

#[test]
fn contexts_apply_masks_with_exact_kept_counts() {
    let cfg = PetlConfig::pro(methods()[0].clone()).with_keep(0.3);
    let (state, _, _, _) = setup(&cfg, 5);
    for (name, m) in state.hard_masks().unwrap() {
        let ones = m.sum_all().unwrap().to_scalar::<f32>().unwrap() as usize;
        assert_eq!(ones, kept_count(m.elem_count(), 0.3), "{name}");
    }
    // the effective weight is prototype ⊙ mask
    let ctx = state.context("rte").unwrap();
    let LayerPetl::Adapter(a) = ctx.layer(1) else {
        panic!()
    };
    let proto = state
        .prototype_vars()
        .into_iter()
        .find(|(n, _)| n == "adapter.down.weight")
        .unwrap()
        .1;
    let m = state.effective_mask("down", "1", "rte").unwrap().unwrap();
    let expect = proto.as_tensor().mul(&m).unwrap();
    assert_eq!(
        a.down_weight.to_vec2::<f32>().unwrap(),
        expect.to_vec2::<f32>().unwrap()
    );
}

#[test]
fn layer_and_task_masks_differ_and_combine_with_or() {
    let cfg = PetlConfig::pro(methods()[0].clone())
        .with_share(Share::LayersTasks)
        .with_keep(0.3);
    let (state, _, _, _) = setup(&cfg, 7);
    let hard = state.hard_masks().unwrap();
    let t = &hard["mask.task.sst2.down"];
    let l = &hard["mask.2.down"];
    let used = state.effective_mask("down", "2", "sst2").unwrap().unwrap();
    let expect = t.maximum(l).unwrap();
    assert_eq!(
        used.to_vec2::<f32>().unwrap(),
        expect.to_vec2::<f32>().unwrap()
    );
    // every layer mask is an independent parameter
    assert_ne!(
        hard["mask.0.down"].to_vec2::<f32>().unwrap(),
        hard["mask.1.down"].to_vec2::<f32>().unwrap()
    );
}

#[test]
fn frozen_and_materialized_contexts_equal_training_outputs() {
    for cfg in all_configs() {
        let (mut state, _, base, x) = setup(&cfg, 11);
        let before = toy_forward(&state, &base, &x, "rte")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        state.materialize().unwrap();
        let after = toy_forward(&state, &base, &x, "rte")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(before, after, "{}", cfg.describe());
        // materialized contexts carry no graph: no gradient reaches the scores
        let y = toy_forward(&state, &base, &x, "rte").unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        for (name, v) in state.score_vars() {
            assert!(grads.get(v.as_tensor()).is_none(), "{name}");
        }
    }
}

#[test]
fn materialized_lora_pairs_fold_into_one_weight_delta() {
    for cfg in all_configs()
        .into_iter()
        .filter(|c| matches!(c.method, Method::Lora { .. }))
    {
        let (mut state, _, base, x) = setup(&cfg, 17);
        // while training the pair stays two low-rank products (gradients reach A and B)
        let training = state.context("rte").unwrap();
        assert!(training.layer(0).merged_lora(LoraTarget::Q).is_none());
        state.materialize().unwrap();
        let ctx = state.context("rte").unwrap();
        for (l, w) in base.iter().enumerate() {
            let layer = ctx.layer(l);
            for target in [LoraTarget::Q, LoraTarget::V] {
                let delta = layer.merged_lora(target).expect("a folded delta");
                assert_eq!(delta.dims(), &[16, 16]);
                // x (W + ΔW)ᵀ = x Wᵀ + (α/r)(x Aᵀ) Bᵀ
                let folded = ops::linear(&x, &(w + delta).unwrap(), None).unwrap();
                let pair = (ops::linear(&x, w, None).unwrap()
                    + layer.lora_delta(target, &x).unwrap().unwrap())
                .unwrap();
                let diff = max_abs(&(folded - pair).unwrap());
                assert!(diff < 1e-5, "{} layer {l}: {diff}", cfg.describe());
            }
            // no LoRA pair on K in these configurations
            assert!(layer.merged_lora(LoraTarget::K).is_none());
        }
        // training again: unfolded
        state.unfreeze().unwrap();
        let again = state.context("rte").unwrap();
        assert!(again.layer(0).merged_lora(LoraTarget::Q).is_none());
    }
}

fn head() -> BTreeMap<String, Tensor> {
    BTreeMap::from([(
        "head.out_proj.weight".to_string(),
        Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &Device::Cpu).unwrap(),
    )])
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for (i, cfg) in all_configs().into_iter().enumerate() {
        let (state, _, base, x) = setup(&cfg, 13);
        let path = dir.path().join(format!("state{i}.safetensors"));
        let manifest = state.save(&path, &head(), 1000).unwrap();
        assert_eq!(manifest.storage.mask_entries, state.plan().mask_entries());
        let loaded = PetlState::load(&path, &cfg, &layout(), &Device::Cpu).unwrap();
        assert_eq!(
            loaded.extra["head.out_proj.weight"]
                .to_vec2::<f32>()
                .unwrap(),
            head()["head.out_proj.weight"].to_vec2::<f32>().unwrap()
        );
        for task in ["rte", "sst2"] {
            let a = toy_forward(&state, &base, &x, task)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let b = toy_forward(&loaded.state, &base, &x, task)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(a, b, "{} / {task}", cfg.describe());
        }
        // payload: header aside, the file holds exactly prototype floats + packed masks + head
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(size >= manifest.storage.payload_bytes + 16, "{size}");
        // no temp files are left behind
        assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }
}

fn saved(dir: &std::path::Path) -> (PetlConfig, std::path::PathBuf) {
    let cfg = PetlConfig::pro(methods()[0].clone());
    let (state, _, _, _) = setup(&cfg, 17);
    let path = dir.join("ok.safetensors");
    state.save(&path, &head(), 1000).unwrap();
    (cfg, path)
}

fn load_kind(path: &std::path::Path, cfg: &PetlConfig, lay: &PetlLayout) -> LoadErrorKind {
    match PetlState::load(path, cfg, lay, &Device::Cpu) {
        Err(PetlError::Load { kind, .. }) => kind,
        other => panic!("expected a load error, got {other:?}"),
    }
}

/// Rewrite a saved file with edited tensors/metadata.
fn rewrite(
    src: &std::path::Path,
    dst: &std::path::Path,
    edit: impl Fn(
        &mut BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
        &mut serde_json::Value,
    ),
) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["propetl.manifest"]).unwrap();
    let mut tensors: BTreeMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors, &mut manifest);
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, (d, s, b))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta =
        std::collections::HashMap::from([("propetl.manifest".to_string(), manifest.to_string())]);
    std::fs::write(
        dst,
        safetensors::tensor::serialize(views, Some(meta)).unwrap(),
    )
    .unwrap();
}

#[test]
fn every_load_error_is_typed() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, path) = saved(dir.path());
    let lay = layout();
    let bad = dir.path().join("bad.safetensors");

    // truncated file
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 7]).unwrap();
    assert!(matches!(
        load_kind(&bad, &cfg, &lay),
        LoadErrorKind::Corrupt(_)
    ));
    std::fs::write(&bad, b"hello").unwrap();
    assert!(matches!(
        load_kind(&bad, &cfg, &lay),
        LoadErrorKind::Corrupt(_)
    ));

    // unknown version
    rewrite(&path, &bad, |_, m| m["version"] = 99.into());
    assert_eq!(
        load_kind(&bad, &cfg, &lay),
        LoadErrorKind::UnsupportedVersion {
            found: 99,
            supported: propetl_runtime::io::VERSION
        }
    );

    // malformed manifest
    rewrite(&path, &bad, |_, m| m["config"] = "adapter".into());
    assert!(matches!(
        load_kind(&bad, &cfg, &lay),
        LoadErrorKind::BadManifest(_)
    ));

    // masks of another prototype: a LoRA model cannot load adapter masks
    let lora = PetlConfig::pro(methods()[1].clone());
    assert!(matches!(
        load_kind(&path, &lora, &lay),
        LoadErrorKind::WrongPrototype { .. }
    ));
    // another layout (more layers)
    let lay4 = PetlLayout::single_task(16, 2, 4).with_tasks(["rte", "sst2"]);
    assert!(matches!(
        load_kind(&path, &cfg, &lay4),
        LoadErrorKind::WrongPrototype { .. }
    ));

    // a missing tensor
    rewrite(&path, &bad, |t, _| {
        t.remove("mask.1.up");
    });
    assert_eq!(
        load_kind(&bad, &cfg, &lay),
        LoadErrorKind::MissingTensor("mask.1.up".into())
    );

    // a tensor of the wrong shape
    rewrite(&path, &bad, |t, _| {
        let e = t.get_mut("adapter.down.bias").unwrap();
        e.1 = vec![2, 2];
    });
    assert!(
        matches!(load_kind(&bad, &cfg, &lay), LoadErrorKind::TensorMismatch { name, .. } if name == "adapter.down.bias")
    );

    // an unexpected tensor
    rewrite(&path, &bad, |t, _| {
        t.insert(
            "adapter.extra".into(),
            (safetensors::Dtype::F32, vec![1], vec![0; 4]),
        );
    });
    assert_eq!(
        load_kind(&bad, &cfg, &lay),
        LoadErrorKind::UnexpectedTensor("adapter.extra".into())
    );

    // no manifest at all
    let views = vec![(
        "x".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::U8, vec![1], &[0u8]).unwrap(),
    )];
    std::fs::write(&bad, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    assert_eq!(load_kind(&bad, &cfg, &lay), LoadErrorKind::MissingManifest);

    // a missing file is an I/O error naming the path
    match PetlState::load(dir.path().join("nope"), &cfg, &lay, &Device::Cpu) {
        Err(PetlError::Io { path, .. }) => assert!(path.ends_with("nope")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn prefix_padding_bits_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    // prefix site 3 × 32 = 96 entries → whole bytes; use length 3, hidden 16 → 96; pick keep so
    // a LoRA A of 4×16 = 64 … all whole. Build a layout with hidden 6 to get 3·12 = 36 bits.
    let lay = PetlLayout::single_task(6, 2, 2);
    let cfg = PetlConfig::pro(Method::Prefix {
        length: 3,
        hidden: 4,
    });
    let vm = VarMap::new();
    let state = PetlState::new(&cfg, &lay, &vm, &mut PetlRng::seed(1), &Device::Cpu).unwrap();
    let path = dir.path().join("p.safetensors");
    state.save(&path, &BTreeMap::new(), 10).unwrap();
    let bad = dir.path().join("bad.safetensors");
    rewrite(&path, &bad, |t, _| {
        let e = t.get_mut("mask.0.prefix").unwrap();
        *e.2.last_mut().unwrap() = 0xff;
    });
    assert!(
        matches!(load_kind(&bad, &cfg, &lay), LoadErrorKind::TensorMismatch { name, .. } if name == "mask.0.prefix")
    );
    assert!(PetlState::load(&path, &cfg, &lay, &Device::Cpu).is_ok());
}

#[test]
fn scores_are_kaiming_uniform_of_their_shape() {
    let cfg = PetlConfig::pro(methods()[0].clone());
    let (state, _, _, _) = setup(&cfg, 19);
    for (name, v) in state.score_vars() {
        let fan_in = v.dims()[1] as f32;
        let max = max_abs(v.as_tensor());
        assert!(max <= 1.0 / fan_in.sqrt(), "{name}");
        assert!(max > 0.5 / fan_in.sqrt(), "{name}");
    }
    let _ = Var::from_tensor(&Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
}
