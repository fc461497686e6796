//! A small transformer written from scratch, annotated with `#[propetl]`, trained with
//! ProAdapter on a toy task; then saved, reloaded and checked to give identical outputs.
//!
//! Run: `cargo run --release --example custom_transformer`

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use propetl::prelude::*;
use propetl::runtime::{clip_grad_norm, mask::kept_count};

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
    head: (Tensor, Tensor),
}

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
            head: (w.as_tensor().clone(), b.as_tensor().clone()),
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
        Ok(ops::linear(&h.mean(1)?, &self.head.0, Some(&self.head.1))?)
    }
}

/// Label 1 when tokens from the lower half of the vocabulary are the majority.
fn batch(rng: &mut PetlRng, n: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut ids = Vec::with_capacity(n * SEQ);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let p = if rng.uniform01() < 0.5 { 0.3 } else { 0.7 };
        let mut low = 0;
        for _ in 0..SEQ {
            let is_low = rng.uniform01() < p;
            low += usize::from(is_low);
            ids.push(if is_low {
                rng.below(VOCAB / 2)
            } else {
                VOCAB / 2 + rng.below(VOCAB / 2)
            } as u32);
        }
        labels.push(i64::from(2 * low > SEQ));
    }
    Ok((
        Tensor::from_vec(ids, (n, SEQ), dev)?,
        Tensor::from_vec(labels, n, dev)?,
    ))
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

    let steps = 300;
    let hyper = GroupHyper {
        lr: 3e-3,
        mask_lr: 3e-3,
        weight_decay: 0.01,
        mask_weight_decay: 0.0,
    };
    let mut opt = AdamW::new(
        model.optimizer_groups(&varmap, &hyper),
        Schedule::warmup_ratio(0.1, steps),
    );
    for g in opt.groups() {
        println!(
            "group {:<9} lr {:.0e} wd {:<4} tensors {}",
            g.name,
            g.lr,
            g.weight_decay,
            g.params.len()
        );
    }
    let vars = opt.vars();
    let mut curve = Vec::new();
    let mut window = 0.0;
    for step in 1..=steps {
        let (ids, labels) = batch(&mut rng, 32, &dev)?;
        let loss = ops::cross_entropy(&model.forward(&ids)?, &labels)?;
        let l = loss.to_scalar::<f32>()?;
        ensure!(l.is_finite(), "loss became {l} at step {step}");
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, &vars, 1.0)?;
        opt.step(&grads)?;
        window += l as f64;
        if step % 25 == 0 {
            println!("step {step:>3}  loss {:.4}", window / 25.0);
            curve.push(window / 25.0);
            window = 0.0;
        }
    }
    ensure!(
        curve.last() < curve.first(),
        "the loss did not go down: {curve:?}"
    );

    model.merge_for_inference()?;
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
    let (test_ids, test_labels) = batch(&mut PetlRng::seed(7), 512, &dev)?;
    let logits = model.forward(&test_ids)?;
    let acc = logits
        .argmax(1)?
        .to_dtype(DType::I64)?
        .eq(&test_labels)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()?;
    println!("test accuracy {acc:.3}");

    let backbone = VOCAB * HIDDEN + LAYERS * (3 + 1 + 4 + 4) * HIDDEN * HIDDEN;
    let report = model.storage_report(backbone, 2 * HIDDEN + 2)?;
    println!("\n{}", report.to_table());

    // Save, reload into a fresh model, compare outputs bit for bit.
    let dir = std::env::temp_dir().join(format!("propetl-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("tiny.safetensors");
    let head: BTreeMap<String, Tensor> = [
        ("head.weight".to_string(), model.head.0.clone()),
        ("head.bias".to_string(), model.head.1.clone()),
    ]
    .into();
    model.save_petl(&path, &head, backbone)?;
    let loaded = model.load_petl(&path)?;
    let mut fresh =
        TinyTransformer::new(loaded.state, &VarMap::new(), &mut PetlRng::seed(0), &dev)?;
    fresh.head = (
        loaded.extra["head.weight"].clone(),
        loaded.extra["head.bias"].clone(),
    );
    let again = fresh.forward(&test_ids)?;
    let same = logits.flatten_all()?.to_vec1::<f32>()? == again.flatten_all()?.to_vec1::<f32>()?;
    println!(
        "\nsaved {} bytes to {}; reloaded outputs identical: {same}",
        std::fs::metadata(&path)?.len(),
        path.display()
    );
    ensure!(same, "reloaded model gives different outputs");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
