//! Parity against fixtures from an independent PyTorch implementation (see
//! `tests/fixtures/FORMAT.md`): masks, hidden states, logits, loss, every gradient, one AdamW
//! step and the loss after it, each compared with the fixture's tolerance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use propetl_models::roberta::{Checkpoint, Variant};
use propetl_runtime::{reference_groups, AdamW, GroupHyper, NumericOverrides, PetlRng, Schedule};
use serde::Serialize;

/// One compared tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorCheck {
    /// `logits`, `grad:adapter.down.weight`, `mask:mask.0.down`, …
    pub name: String,
    /// `max|ours − fixture| / max|fixture|` (for masks: the number of differing entries).
    pub max_rel_err: f64,
    /// Whether it is within tolerance (masks: identical).
    pub ok: bool,
}

/// The result of one fixture folder.
#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    /// The folder.
    pub fixture: PathBuf,
    /// Variant name.
    pub variant: String,
    /// Tolerance used.
    pub atol_rel: f64,
    /// Every compared tensor.
    pub checks: Vec<TensorCheck>,
}

impl ParityReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    /// Human-readable lines.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} ({}, tolerance {:e})\n",
            self.fixture.display(),
            self.variant,
            self.atol_rel
        );
        for c in &self.checks {
            s += &format!(
                "  {:<4} {:<40} {:.3e}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.max_rel_err
            );
        }
        s += &format!(
            "{}: {} of {} tensors within tolerance\n",
            if self.passed() { "PASS" } else { "FAIL" },
            self.checks.iter().filter(|c| c.ok).count(),
            self.checks.len()
        );
        s
    }
}

fn load_st(path: &Path, dev: &Device) -> Result<BTreeMap<String, Tensor>> {
    let m = candle_core::safetensors::load(path, dev)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(m.into_iter().collect())
}

fn rel_err(ours: &Tensor, theirs: &Tensor) -> Result<f64> {
    if ours.dims() != theirs.dims() {
        bail!("shape {:?} vs fixture {:?}", ours.dims(), theirs.dims());
    }
    let a = ours.to_dtype(DType::F64)?;
    let b = theirs.to_dtype(DType::F64)?;
    let diff = a.sub(&b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// How fixture names map onto ours.
struct NameMap {
    layers: usize,
    variant: String,
}

impl NameMap {
    /// Fixture tensor → our tensors (names and values).
    fn our_tensors(&self, name: &str, t: &Tensor) -> Result<Vec<(String, Tensor)>> {
        if name == "mask.prefix" {
            return (0..self.layers)
                .map(|l| Ok((format!("mask.{l}.prefix"), t.get(l)?)))
                .collect();
        }
        if self.variant == "adapter" && name.starts_with("mask.") {
            // reference layout: scores stored transposed relative to the weights
            return Ok(vec![(name.to_string(), t.t()?.contiguous()?)]);
        }
        Ok(vec![(name.to_string(), t.clone())])
    }

    /// Our tensors → the fixture's tensor `name`.
    fn fixture_tensor(&self, name: &str, ours: &BTreeMap<String, Tensor>) -> Result<Tensor> {
        let get = |n: &str| {
            ours.get(n)
                .cloned()
                .ok_or_else(|| anyhow!("we have no tensor `{n}`"))
        };
        if let Some(l) = name.strip_prefix("mask.prefix.") {
            // masks.safetensors keys each layer's slice as `mask.prefix.{l}`
            return get(&format!("mask.{l}.prefix"));
        }
        if name == "mask.prefix" {
            let parts = (0..self.layers)
                .map(|l| get(&format!("mask.{l}.prefix")))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::stack(&parts, 0)?);
        }
        if self.variant == "adapter" && name.starts_with("mask.") {
            return Ok(get(name)?.t()?.contiguous()?);
        }
        get(name)
    }
}

/// Run every check of one RoBERTa fixture folder.
pub fn check_fixture(dir: &Path) -> Result<ParityReport> {
    let dev = Device::Cpu;
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("settings.json"))
            .with_context(|| format!("reading {}/settings.json", dir.display()))?,
    )
    .context("settings.json is not valid JSON")?;
    let model_type = settings["model_type"].as_str().unwrap_or("?");
    if model_type != "roberta" && model_type != "bert" {
        bail!("model_type `{model_type}` is not supported by the parity check yet (RoBERTa/BERT only)");
    }
    let p = &settings["propetl"];
    let variant = p["variant"]
        .as_str()
        .ok_or_else(|| anyhow!("settings.propetl.variant missing"))?;
    let shared = p["shared"]
        .as_bool()
        .ok_or_else(|| anyhow!("settings.propetl.shared missing"))?;
    let keep = p["density"]
        .as_f64()
        .ok_or_else(|| anyhow!("settings.propetl.density missing"))?;
    let num_labels = settings["num_labels"]
        .as_u64()
        .ok_or_else(|| anyhow!("settings.num_labels missing"))? as usize;
    let atol_rel = settings["tolerance"]["atol_rel"].as_f64().unwrap_or(1e-5);
    let num = |k: &str| p[k].as_f64();
    let overrides = match variant {
        "adapter" => NumericOverrides {
            reduction: num("reduction_factor").map(|r| r as usize),
            ..Default::default()
        },
        "lora" => NumericOverrides {
            r: num("lora_r").map(|r| r as usize),
            alpha: num("lora_alpha"),
            ..Default::default()
        },
        "prefix" => NumericOverrides {
            length: num("prefix_length").map(|r| r as usize),
            hidden: num("prefix_bottleneck").map(|r| r as usize),
            ..Default::default()
        },
        other => bail!("unknown variant `{other}`"),
    };
    if variant == "adapter" && p["adapter_act"].as_str().is_some_and(|a| a != "relu") {
        bail!(
            "RoBERTa adapters use ReLU; fixture asks for {}",
            p["adapter_act"]
        );
    }
    let overrides = NumericOverrides {
        keep: shared.then_some(keep),
        ..overrides
    };
    let v = Variant::parse(&if shared {
        format!("pro_{variant}")
    } else {
        variant.to_string()
    })?;

    let ckpt = Checkpoint::open(dir.join("ckpt"), &dev)?;
    let varmap = VarMap::new();
    let mut model = v.build(
        &ckpt,
        num_labels,
        &overrides,
        &varmap,
        &mut PetlRng::seed(0),
    )?;
    let names = NameMap {
        layers: ckpt.config.num_hidden_layers,
        variant: variant.to_string(),
    };

    // Load the fixture's parameters into our variables.
    let params = load_st(&dir.join("params.safetensors"), &dev)?;
    let vars = varmap.data().lock().expect("varmap").clone();
    let mut ours_count = 0;
    for (name, t) in &params {
        for (ours, value) in names.our_tensors(name, t)? {
            let var = vars.get(&ours).ok_or_else(|| {
                anyhow!("fixture tensor `{name}` has no counterpart `{ours}` in our model")
            })?;
            if var.dims() != value.dims() {
                bail!(
                    "`{ours}`: our shape {:?}, fixture {:?}",
                    var.dims(),
                    value.dims()
                );
            }
            var.set(&value)?;
            ours_count += 1;
        }
    }
    if ours_count != vars.len() {
        bail!(
            "fixture sets {ours_count} of our {} trainable tensors",
            vars.len()
        );
    }

    let inputs = load_st(&dir.join("inputs.safetensors"), &dev)?;
    let ids = inputs
        .get("input_ids")
        .ok_or_else(|| anyhow!("inputs: no input_ids"))?;
    let mask = inputs
        .get("attention_mask")
        .ok_or_else(|| anyhow!("inputs: no attention_mask"))?;
    let labels = inputs
        .get("labels")
        .ok_or_else(|| anyhow!("inputs: no labels"))?;
    let outputs = load_st(&dir.join("outputs.safetensors"), &dev)?;
    let mut checks = Vec::new();
    let mut check = |name: String, ours: &Tensor, theirs: &Tensor| -> Result<()> {
        let e = rel_err(ours, theirs).with_context(|| name.clone())?;
        checks.push(TensorCheck {
            name,
            max_rel_err: e,
            ok: e <= atol_rel,
        });
        Ok(())
    };

    // Masks: exact.
    let fixture_masks = load_st(&dir.join("masks.safetensors"), &dev)?;
    let our_masks = model.state().hard_masks()?;
    let mut mask_checks = Vec::new();
    let fixture_masks: BTreeMap<String, Tensor> = fixture_masks
        .into_iter()
        .filter(|(n, _)| !n.starts_with('_'))
        .collect();
    for (name, m) in &fixture_masks {
        let ours = names.fixture_tensor(name, &our_masks)?;
        let differ = ours
            .ne(m)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        mask_checks.push(TensorCheck {
            name: format!("mask:{name}"),
            max_rel_err: differ,
            ok: differ == 0.0,
        });
    }
    if fixture_masks.len() != our_masks.len() {
        bail!(
            "fixture has {} masks, we have {}",
            fixture_masks.len(),
            our_masks.len()
        );
    }

    // Forward and loss.
    let (hidden, logits) = model.forward(ids, mask, None)?;
    let loss = model.loss(&logits, labels)?;
    check("hidden".into(), &hidden, &outputs["hidden"])?;
    check("logits".into(), &logits, &outputs["logits"])?;
    check("loss".into(), &loss.reshape(1)?, &outputs["loss"])?;

    // Gradients of every trainable tensor.
    let grads = loss.backward()?;
    let fixture_grads = load_st(&dir.join("grads.safetensors"), &dev)?;
    let our_grads: BTreeMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| {
            Ok((
                n.clone(),
                grads
                    .get(v.as_tensor())
                    .cloned()
                    .ok_or_else(|| anyhow!("no gradient reached `{n}`"))?,
            ))
        })
        .collect::<Result<_>>()?;
    for (name, g) in &fixture_grads {
        check(
            format!("grad:{name}"),
            &names.fixture_tensor(name, &our_grads)?,
            g,
        )?;
    }

    // One AdamW step with the reference groups, checked against the fixture's group lists.
    let groups_json = &settings["optimizer_step"]["groups"];
    let g = |k: &str, f: &str| {
        groups_json[k][f]
            .as_f64()
            .ok_or_else(|| anyhow!("settings: optimizer_step.groups.{k}.{f} missing"))
    };
    let hyper = GroupHyper {
        lr: g("decay", "lr")?,
        mask_lr: g("mask", "lr")?,
        weight_decay: g("decay", "weight_decay")?,
        mask_weight_decay: g("mask", "weight_decay")?,
    };
    let groups = reference_groups(vars.clone(), &hyper);
    for group in &groups {
        let mut ours: Vec<String> = group.params.iter().map(|(n, _)| n.clone()).collect();
        if variant == "prefix" && group.name == "mask" && !ours.is_empty() {
            ours = vec!["mask.prefix".into()];
        }
        ours.sort();
        let mut theirs: Vec<String> = groups_json[&group.name]["names"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        theirs.sort();
        if ours != theirs {
            bail!(
                "optimizer group `{}`: ours {ours:?}, fixture {theirs:?}",
                group.name
            );
        }
    }
    let mut opt = AdamW::new(groups, Schedule::Constant);
    opt.step(&grads)?;
    let step1 = load_st(&dir.join("step1.safetensors"), &dev)?;
    let after: BTreeMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    for (name, t) in &step1 {
        check(
            format!("step1:{name}"),
            &names.fixture_tensor(name, &after)?,
            t,
        )?;
    }
    if let Some(target) = outputs.get("loss_after_step") {
        model.state_mut().unfreeze()?;
        let (_, logits) = model.forward(ids, mask, None)?;
        check(
            "loss_after_step".into(),
            &model.loss(&logits, labels)?.reshape(1)?,
            target,
        )?;
    }
    let mut all = mask_checks;
    all.extend(checks);
    Ok(ParityReport {
        fixture: dir.to_path_buf(),
        variant: v.name().to_string(),
        atol_rel,
        checks: all,
    })
}
