//! The architecture's promises: the instance API is object-safe across model types, models
//! declare their injection sites (a method without a site is refused), run-time overrides
//! follow the attribute's rules, optimizer roles come from the PETL state and heads, and
//! every trainable tensor of a task model gets a gradient through the generic interface.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use propetl::models::roberta::{self, Checkpoint, RobertaProAdapter};
use propetl::models::t5::{self, T5Checkpoint, T5ProAdapter};
use propetl::prelude::*;
use propetl::runtime::Variant;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

const TWO_CLASSES: TaskKind = TaskKind::Classification { num_labels: 2 };

/// The largest absolute element of `t`.
fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
}

/// LoRA's B starts at zero, which zeroes the gradients of A and of B's masks: move every B
/// off zero (seeded) so that each path carries a gradient.
fn move_lora_b_off_zero(trainables: &[Trainable]) {
    let mut rng = PetlRng::seed(9);
    for t in trainables.iter().filter(|t| t.name.ends_with(".B")) {
        let b = rng.normal(t.var.dims(), 0.02, t.var.device()).unwrap();
        t.var.set(&b).unwrap();
    }
}

#[test]
fn box_dyn_model_trait_holds_two_model_types() {
    let dev = Device::Cpu;
    let rob = Checkpoint::open(fixtures().join("tiny-roberta"), &dev).unwrap();
    let t5c = T5Checkpoint::open(fixtures().join("t5-pro_adapter-s0/ckpt"), &dev).unwrap();
    let models: Vec<Box<dyn ProPetlModel>> = vec![
        Box::new(
            RobertaProAdapter::from_checkpoint(
                &rob,
                TWO_CLASSES,
                &NumericOverrides::default(),
                &VarMap::new(),
                &mut PetlRng::seed(1),
            )
            .unwrap(),
        ),
        Box::new(
            T5ProAdapter::from_checkpoint(
                &t5c,
                &["sst2", "rte"],
                &NumericOverrides::default(),
                &VarMap::new(),
                &mut PetlRng::seed(1),
            )
            .unwrap(),
        ),
    ];
    let layers: Vec<usize> = models.iter().map(|m| m.num_layers()).collect();
    assert_eq!(
        layers,
        [
            rob.config.num_hidden_layers,
            t5c.config.num_layers + t5c.config.decoder_layers()
        ]
    );
    let tasks = ["default", "rte"];
    for (mut m, task) in models.into_iter().zip(tasks) {
        // the whole instance API through `dyn`
        assert_eq!(m.petl_context(task).unwrap().len(), m.num_layers());
        let groups = m.optimizer_groups(&GroupHyper::default(), &[]);
        assert_eq!(groups[0].name, "mask");
        assert!(!groups[0].params.is_empty());
        let report = m.storage_report(1_000_000, 0).unwrap();
        assert!(report.mask_entries > 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petl.safetensors");
        m.save_petl(&path, &Default::default(), 1_000_000).unwrap();
        let loaded = m.load_petl(&path).unwrap();
        assert_eq!(
            loaded.state.hard_masks().unwrap().len(),
            m.petl().hard_masks().unwrap().len()
        );
        m.materialize_for_inference().unwrap();
        assert!(m.petl().is_frozen());
    }
}

/// A block with only the adapter site, used in a generic model (checked at `init`).
struct AdapterOnly;
impl PetlSites for AdapterOnly {
    const SITES: Sites = Sites::ADAPTER;
}

#[propetl(lora(r = 4, targets = ["q", "v"]), share = "layers", keep = 0.5)]
struct GenericLora<B> {
    #[propetl(layers)]
    blocks: Vec<B>,
    #[propetl(state)]
    petl: PetlState,
}

#[test]
fn a_method_without_a_site_is_an_init_error_and_t5_refuses_a_prefix() {
    let layout = PetlLayout::single_task(16, 2, 2);
    let err = <GenericLora<AdapterOnly> as PetlSpec>::init_petl(
        &layout,
        &NumericOverrides::default(),
        &VarMap::new(),
        &mut PetlRng::seed(0),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("GenericLora") && err.contains("no LoRA site on q, v"),
        "{err}"
    );
    assert!(err.contains("declare: adapter"), "{err}");
    // nothing was created for a refused model: no prototype, no scores
    let varmap = VarMap::new();
    let _ = <GenericLora<AdapterOnly> as PetlSpec>::init_petl(
        &layout,
        &NumericOverrides::default(),
        &varmap,
        &mut PetlRng::seed(0),
        &Device::Cpu,
    );
    assert!(varmap.all_vars().is_empty());
    // T5 declares the adapter site on its blocks and LoRA on q/v of its attention modules,
    // no prefix site: its variant table has no prefix variant
    for v in [Variant::ProPrefix, Variant::Prefix] {
        let e = t5::spec(v).unwrap_err().to_string();
        assert!(
            e.contains("T5 has no variant") && e.contains("no prefix site"),
            "{e}"
        );
    }
    assert!(t5::spec(Variant::ProLora).is_ok() && t5::spec(Variant::Lora).is_ok());
    assert_eq!(
        <T5ProAdapter as PetlSpec>::SITES,
        Sites::ADAPTER,
        "T5 blocks declare the adapter site"
    );
    assert_eq!(
        <t5::T5ProLora as PetlSpec>::SITES,
        <t5::AttentionSite as propetl::runtime::PetlSites>::SITES,
        "T5's LoRA variants' layers are attention modules"
    );
}

#[test]
fn run_time_overrides_follow_the_attributes_rules() {
    let dev = Device::Cpu;
    let rob = Checkpoint::open(fixtures().join("tiny-roberta"), &dev).unwrap();
    // `keep` on the unshared baseline: the attribute rejects it, so does the run time
    let keep = NumericOverrides {
        keep: Some(0.5),
        ..Default::default()
    };
    let err = roberta::build(
        Variant::Adapter,
        &rob,
        TWO_CLASSES,
        &keep,
        &VarMap::new(),
        &mut PetlRng::seed(0),
    )
    .err()
    .expect("keep on an unshared baseline must fail")
    .to_string();
    assert!(err.contains("keep"), "{err}");
    // a LoRA size on an adapter variant
    let rank = NumericOverrides {
        r: Some(4),
        ..Default::default()
    };
    assert!(roberta::build(
        Variant::ProAdapter,
        &rob,
        TWO_CLASSES,
        &rank,
        &VarMap::new(),
        &mut PetlRng::seed(0)
    )
    .is_err());
}

#[test]
fn roles_come_from_the_state_and_every_trainable_gets_a_gradient() {
    let dev = Device::Cpu;
    let rob = Checkpoint::open(fixtures().join("tiny-roberta"), &dev).unwrap();
    for variant in Variant::ALL {
        let model = roberta::build(
            variant,
            &rob,
            TWO_CLASSES,
            &NumericOverrides::default(),
            &VarMap::new(),
            &mut PetlRng::seed(3),
        )
        .unwrap();
        let groups = model.task_optimizer_groups(&GroupHyper::default());
        let names =
            |g: usize| -> Vec<String> { groups[g].params.iter().map(|(n, _)| n.clone()).collect() };
        let (mask, decay, no_decay) = (names(0), names(1), names(2));
        assert_eq!(mask.is_empty(), !variant.is_pro(), "{variant}");
        assert!(mask.iter().all(|n| n.starts_with("mask.")), "{mask:?}");
        assert!(decay.contains(&"head.dense.weight".to_string()));
        assert!(no_decay.contains(&"head.out_proj.bias".to_string()));
        assert!(
            no_decay
                .iter()
                .all(|n| n.ends_with("bias") || (variant.is_full() && n.contains("LayerNorm"))),
            "{no_decay:?}"
        );
        // every trainable tensor, found through the model, gets a non-zero gradient
        let examples = [
            Example::new(vec![0, 31, 87, 112, 2], 1.0),
            Example::new(vec![0, 45, 2], 0.0),
        ];
        // LoRA's B starts at zero, which zeroes the gradients of A and of B's masks
        move_lora_b_off_zero(&model.trainables());
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = model.collate(&refs, 16, "default").unwrap();
        let loss = model.loss(&batch, &mut ForwardMode::Eval).unwrap();
        let grads = loss.backward().unwrap();
        for t in model.trainables() {
            let g = grads
                .get(t.var.as_tensor())
                .unwrap_or_else(|| panic!("{variant}: no gradient for {}", t.name));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{variant}: zero gradient for {}", t.name);
        }
        let backbone = model
            .trainables()
            .iter()
            .filter(|t| t.name.contains("embeddings.") || t.name.contains("encoder.layer"))
            .count();
        if variant.is_full() {
            // full fine-tuning: every backbone tensor of the checkpoint trains (and got a
            // gradient above), under its Hugging Face name
            assert_eq!(
                backbone,
                roberta::hf_tensors(&rob.config).len(),
                "{variant}"
            );
            assert!(decay.contains(&format!(
                "{}encoder.layer.0.attention.self.query.weight",
                rob.prefix
            )));
            assert!(no_decay.contains(&format!("{}embeddings.LayerNorm.weight", rob.prefix)));
        } else {
            // frozen means frozen: the backbone is plain tensors, never a trainable
            assert_eq!(backbone, 0, "{variant}");
        }
        let _: &Tensor = &batch.input_ids;
    }
}

/// `logits` (the last layer run for the first position only, what training and `predict`
/// use) gives the logits of the full forward pass, and the same gradient for every trainable
/// tensor, with padding, prefix keys, LoRA and trainable backbone weights in the last layer.
#[test]
fn first_position_logits_match_the_full_forward_with_gradients() {
    let dev = Device::Cpu;
    let rob = Checkpoint::open(fixtures().join("tiny-roberta"), &dev).unwrap();
    let ids = Tensor::new(&[[0u32, 31, 87, 112, 2], [0, 45, 2, 1, 1]], &dev).unwrap();
    let attention_mask = Tensor::new(&[[1u32, 1, 1, 1, 1], [1, 1, 1, 0, 0]], &dev).unwrap();
    fn check(
        name: &str,
        trainables: Vec<Trainable>,
        full: (Tensor, Tensor),
        first: Tensor,
        full_again: Tensor,
    ) {
        let (hidden, full) = full;
        assert_eq!(hidden.dims(), &[2, 5, hidden.dim(2).unwrap()], "{name}");
        assert!(
            max_abs(&full.sub(&first).unwrap()) < 1e-5,
            "{name}: logits differ"
        );
        // gradients of a loss that weighs every logit differently
        let weights = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], full.device()).unwrap();
        let loss = |l: &Tensor| l.mul(&weights).unwrap().sum_all().unwrap();
        let g_full = loss(&full_again).backward().unwrap();
        let g_first = loss(&first).backward().unwrap();
        assert!(!trainables.is_empty());
        for t in &trainables {
            let a = g_full.get(t.var.as_tensor());
            let b = g_first.get(t.var.as_tensor());
            let (a, b) = (
                a.unwrap_or_else(|| panic!("{name}: no gradient for {}", t.name)),
                b.unwrap_or_else(|| panic!("{name}: no gradient for {}", t.name)),
            );
            assert!(
                max_abs(&a.sub(b).unwrap()) <= 1e-4 * max_abs(a).max(1e-3),
                "{name}: gradient of {} differs",
                t.name
            );
        }
    }
    macro_rules! pro_model {
        ($ty:ty, $name:expr) => {{
            let model = <$ty>::from_checkpoint(
                &rob,
                TWO_CLASSES,
                &NumericOverrides::default(),
                &VarMap::new(),
                &mut PetlRng::seed(3),
            )
            .unwrap();
            move_lora_b_off_zero(&model.trainables());
            let run = |first: bool| {
                if first {
                    model
                        .logits(&ids, &attention_mask, "default", &mut ForwardMode::Eval)
                        .unwrap()
                } else {
                    model
                        .forward(&ids, &attention_mask, "default", &mut ForwardMode::Eval)
                        .unwrap()
                        .1
                }
            };
            let full = model
                .forward(&ids, &attention_mask, "default", &mut ForwardMode::Eval)
                .unwrap();
            check($name, model.trainables(), full, run(true), run(false));
        }};
    }
    pro_model!(roberta::RobertaProAdapter, "pro_adapter");
    pro_model!(roberta::RobertaProLora, "pro_lora");
    pro_model!(roberta::RobertaProPrefix, "pro_prefix");
    pro_model!(roberta::RobertaPrefix, "prefix");
    let model = roberta::RobertaFull::from_checkpoint(
        &rob,
        TWO_CLASSES,
        &VarMap::new(),
        &mut PetlRng::seed(3),
    )
    .unwrap();
    let full = model
        .forward(&ids, &attention_mask, &mut ForwardMode::Eval)
        .unwrap();
    let first = model
        .logits(&ids, &attention_mask, &mut ForwardMode::Eval)
        .unwrap();
    let again = model
        .forward(&ids, &attention_mask, &mut ForwardMode::Eval)
        .unwrap()
        .1;
    check("full", model.trainables(), full, first, again);
}
