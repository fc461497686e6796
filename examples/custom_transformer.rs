//! A small transformer written from scratch, annotated with `#[propetl]`, implementing the
//! `TaskModel` interface and trained by the library's trainer (`propetl::train`) with
//! ProAdapter on a toy task; then saved, reloaded and checked to give identical outputs.
//!
//! Run: `cargo run --release --example custom_transformer`

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use propetl::prelude::*;
use propetl::runtime::mask::kept_count;
use propetl::runtime::parallel::on_compute_pool;
use propetl::runtime::task::{collate_labeled, predictions_from_logits};
use propetl::train::{evaluate, train, EvalSettings, Silent};

const VOCAB: usize = 32;
const HIDDEN: usize = 32;
const HEADS: usize = 2;
const LAYERS: usize = 3;
const SEQ: usize = 12;

/// A pre-norm transformer block with frozen random weights.
struct Block {
    qkv: Tensor,
    out: Tensor,
    ffn_in: Tensor,
    ffn_out: Tensor,
    norm: (Tensor, Tensor),
}

impl Block {
    fn new(rng: &mut PetlRng, dev: &Device) -> Result<Self> {
        Ok(Self {
            qkv: rng.normal((3 * HIDDEN, HIDDEN), 0.2, dev)?,
            out: rng.normal((HIDDEN, HIDDEN), 0.2, dev)?,
            ffn_in: rng.normal((4 * HIDDEN, HIDDEN), 0.2, dev)?,
            ffn_out: rng.normal((HIDDEN, 4 * HIDDEN), 0.1, dev)?,
            norm: (
                Tensor::ones(HIDDEN, DType::F32, dev)?,
                Tensor::zeros(HIDDEN, DType::F32, dev)?,
            ),
        })
    }

    /// The block; `petl` is this layer's effective (masked) module: one call at the site.
    fn forward(&self, x: &Tensor, petl: &LayerPetl) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let hd = h / HEADS;
        let n = ops::layer_norm(x, &self.norm.0, &self.norm.1, 1e-5)?;
        let qkv = ops::linear(&n, &self.qkv, None)?;
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * h, h)?
                .reshape((b, s, HEADS, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let att = ops::softmax_last_dim(&(q.matmul(&k.t()?)? / (hd as f64).sqrt())?)?;
        let ctx = att.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let x = (x + ops::linear(&ctx, &self.out, None)?)?;
        let n = ops::layer_norm(&x, &self.norm.0, &self.norm.1, 1e-5)?;
        let f = ops::linear(
            &ops::linear(&n, &self.ffn_in, None)?.relu()?,
            &self.ffn_out,
            None,
        )?;
        let y = (x + &f)?;
        // injection site: the adapter after the FFN
        Ok(match petl.adapter(&f)? {
            Some(a) => (y + a)?,
            None => y,
        })
    }
}

/// The block applies an adapter after its FFN (and has no LoRA or prefix site): the attribute
/// checks this declaration at compile time.
impl PetlSites for Block {
    const SITES: Sites = Sites::ADAPTER;
}

#[propetl(
    adapter(bottleneck = 8, activation = "relu", init_std = 0.05),
    share = "layers",
    keep = 0.5
)]
struct TinyTransformer {
    embed: Tensor,
    #[propetl(layers)]
    blocks: Vec<Block>,
    #[propetl(state)]
    petl: PetlState,
    head: (Var, Var),
}

const CLASSES: TaskKind = TaskKind::Classification { num_labels: 2 };

impl TinyTransformer {
    fn new(petl: PetlState, varmap: &VarMap, rng: &mut PetlRng, dev: &Device) -> Result<Self> {
        let mut backbone_rng = PetlRng::seed(1234); // the frozen backbone is the same every time
        let embed = backbone_rng.normal((VOCAB, HIDDEN), 1.0, dev)?;
        let blocks = (0..LAYERS)
            .map(|_| Block::new(&mut backbone_rng, dev))
            .collect::<Result<_>>()?;
        let w = Var::from_tensor(&rng.normal((2, HIDDEN), 0.02, dev)?)?;
        let b = Var::from_tensor(&Tensor::zeros(2, DType::F32, dev)?)?;
        let mut data = varmap.data().lock().unwrap();
        data.insert("head.weight".into(), w.clone());
        data.insert("head.bias".into(), b.clone());
        Ok(Self {
            embed,
            blocks,
            petl,
            head: (w, b),
        })
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let ctx = self.petl_context("default")?;
        let (b, s) = ids.dims2()?;
        let mut h = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, HIDDEN))?;
        for (l, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, ctx.layer(l))?;
        }
        Ok(ops::linear(
            &h.mean(1)?,
            self.head.0.as_tensor(),
            Some(self.head.1.as_tensor()),
        )?)
    }
}

/// What the library's trainer needs: batches in, a loss out, predictions, the head.
impl TaskModel for TinyTransformer {
    fn task_kind(&self) -> TaskKind {
        CLASSES
    }
    fn collate(
        &self,
        examples: &[&Example],
        max_len: usize,
        task: &str,
    ) -> propetl::runtime::Result<Batch> {
        collate_labeled(examples, CLASSES, max_len, 0, task, self.petl.device())
    }
    fn loss(&self, batch: &Batch, _mode: &mut ForwardMode) -> propetl::runtime::Result<Tensor> {
        let logits = self.forward(&batch.input_ids).map_err(to_petl)?;
        Ok(ops::cross_entropy(&logits, &batch.labels)?)
    }
    fn predict(&self, batch: &Batch) -> propetl::runtime::Result<Vec<Prediction>> {
        let logits = self.forward(&batch.input_ids).map_err(to_petl)?;
        predictions_from_logits(CLASSES, &logits)
    }
    fn head_trainables(&self) -> Vec<Trainable> {
        vec![
            Trainable::new("head.weight", self.head.0.clone(), Role::Decay),
            Trainable::new("head.bias", self.head.1.clone(), Role::NoDecay),
        ]
    }
    fn backbone_params(&self) -> usize {
        VOCAB * HIDDEN + LAYERS * (3 + 1 + 4 + 4) * HIDDEN * HIDDEN
    }
}

fn to_petl(e: anyhow::Error) -> propetl::runtime::PetlError {
    propetl::runtime::PetlError::Model(e.into())
}

/// Label 1 when tokens from the lower half of the vocabulary are the majority.
fn examples(rng: &mut PetlRng, n: usize) -> Vec<Example> {
    (0..n)
        .map(|_| {
            let p = if rng.uniform01() < 0.5 { 0.3 } else { 0.7 };
            let mut low = 0;
            let ids = (0..SEQ)
                .map(|_| {
                    let is_low = rng.uniform01() < p;
                    low += usize::from(is_low);
                    (if is_low {
                        rng.below(VOCAB / 2)
                    } else {
                        VOCAB / 2 + rng.below(VOCAB / 2)
                    }) as u32
                })
                .collect();
            Example::new(ids, if 2 * low > SEQ { 1.0 } else { 0.0 })
        })
        .collect()
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let layout = PetlLayout::single_task(HIDDEN, HEADS, LAYERS);
    let varmap = VarMap::new();
    let mut rng = PetlRng::seed(42);
    let petl = TinyTransformer::init_petl(
        &layout,
        &NumericOverrides::default(),
        &varmap,
        &mut rng,
        &dev,
    )?;
    let mut model = TinyTransformer::new(petl, &varmap, &mut rng, &dev)?;
    println!("spec: {}", TinyTransformer::PROPETL.describe());

    // the library's trainer: groups from the roles of the PETL state and the head
    let train_set = examples(&mut rng, 960);
    let eval_set = examples(&mut PetlRng::seed(5), 256);
    let cfg = TrainConfig {
        epochs: 10,
        batch_size: 32,
        max_len: SEQ,
        lr: 3e-3,
        mask_lr: 3e-3,
        weight_decay: 0.01,
        mask_weight_decay: 0.0,
        warmup_ratio: 0.1,
        seed: 42,
        progress: false,
        ..Default::default()
    };
    for g in model.task_optimizer_groups(&cfg.group_hyper()) {
        println!(
            "group {:<9} lr {:.0e} wd {:<4} tensors {}",
            g.name,
            g.lr,
            g.weight_decay,
            g.params.len()
        );
    }
    let data = TrainData {
        train: &train_set,
        eval: &eval_set,
        task: "default",
        glue: None,
    };
    // on a worker of the compute pool, as the CLI runs its commands: the step's parallel
    // kernels then split their work with this thread instead of handing every job over
    let logs = on_compute_pool(|| train(&mut model, &data, &cfg, &mut Silent))?;
    for e in &logs {
        println!(
            "epoch {:>2}  train loss {:.4}  eval accuracy {:.1}",
            e.epoch,
            e.train_loss,
            e.eval_metric()
        );
    }
    let (first, last) = (logs[0].train_loss, logs[logs.len() - 1].train_loss);
    ensure!(last < first, "the loss did not go down: {first} -> {last}");

    model.materialize_for_inference()?;
    println!("\nmasks (kept fraction):");
    for (name, m) in model.petl().hard_masks()? {
        let kept = m.sum_all()?.to_scalar::<f32>()? as usize;
        ensure!(kept == kept_count(m.elem_count(), TinyTransformer::PROPETL.keep));
        println!(
            "  {name:<14} {kept:>4}/{:<4} = {:.3}",
            m.elem_count(),
            kept as f64 / m.elem_count() as f64
        );
    }
    let test_set = examples(&mut PetlRng::seed(7), 512);
    let how = EvalSettings {
        batch_size: 128,
        max_len: SEQ,
        task: "default",
        glue: None,
    };
    let acc = evaluate(&model, &test_set, &how)?.selection;
    println!("test accuracy {acc:.1}");
    ensure!(
        acc > 60.0,
        "the trained model is not better than chance: {acc}"
    );
    println!("\n{}", model.storage()?.to_table());

    // Save, restore into a fresh model, compare outputs bit for bit.
    let dir = std::env::temp_dir().join(format!("propetl-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tiny.safetensors");
    model.save(&path)?;
    let varmap = VarMap::new();
    let fresh_petl = TinyTransformer::init_petl(
        &layout,
        &NumericOverrides::default(),
        &varmap,
        &mut PetlRng::seed(0),
        &dev,
    )?;
    let mut fresh = TinyTransformer::new(fresh_petl, &varmap, &mut PetlRng::seed(0), &dev)?;
    fresh.restore(&path)?;
    let ids = model.collate(&test_set.iter().collect::<Vec<_>>(), SEQ, "default")?;
    let logits = model.forward(&ids.input_ids)?;
    let again = fresh.forward(&ids.input_ids)?;
    let same = logits.flatten_all()?.to_vec1::<f32>()? == again.flatten_all()?.to_vec1::<f32>()?;
    println!(
        "\nsaved {} bytes to {}; restored outputs identical: {same}",
        std::fs::metadata(&path)?.len(),
        path.display()
    );
    ensure!(same, "the restored model gives different outputs");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
