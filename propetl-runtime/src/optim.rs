//! AdamW with parameter groups, a linear warmup + linear decay schedule, and global-norm
//! gradient clipping (Candle has none of these).
//!
//! The update is PyTorch's `torch.optim.AdamW` exactly: decoupled decay `p ← p·(1 − lr·wd)`,
//! then the bias-corrected Adam step `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{PetlError, Result};

/// Which optimizer group a trainable tensor belongs to (method page §4). The PETL state
/// knows the role of each of its tensors (its plan creates them); heads declare theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Mask scores: own learning rate and weight decay.
    Mask,
    /// Other weights: decayed.
    Decay,
    /// Biases and LayerNorm weights: never decayed.
    NoDecay,
}

/// A trainable tensor: its stable name, the variable and its optimizer role.
#[derive(Debug, Clone)]
pub struct Trainable {
    /// Stable name (`adapter.down.weight`, `mask.0.down`, `head.dense.bias`, …).
    pub name: String,
    /// The variable.
    pub var: Var,
    /// Optimizer group.
    pub role: Role,
}

impl Trainable {
    /// A trainable tensor.
    pub fn new(name: impl Into<String>, var: Var, role: Role) -> Self {
        Self {
            name: name.into(),
            var,
            role,
        }
    }
}

/// Learning rates and weight decays of the three reference groups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupHyper {
    /// Learning rate of weights and biases.
    pub lr: f64,
    /// Learning rate of mask scores.
    pub mask_lr: f64,
    /// Weight decay of weights.
    pub weight_decay: f64,
    /// Weight decay of mask scores.
    pub mask_weight_decay: f64,
}

impl Default for GroupHyper {
    /// The RoBERTa recipe: lr 1e-4, mask lr 3e-3, decay 0.1 on weights and scores.
    fn default() -> Self {
        Self {
            lr: 1e-4,
            mask_lr: 3e-3,
            weight_decay: 0.1,
            mask_weight_decay: 0.1,
        }
    }
}

/// A set of variables sharing a learning rate and weight decay.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// Group name (`mask`, `decay`, `no_decay`, …).
    pub name: String,
    /// The variables, by name.
    pub params: Vec<(String, Var)>,
    /// Base learning rate (before the schedule).
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// Split trainable tensors into the three reference groups by their [`Role`]. Empty groups
/// are kept (with no parameters) so group names are stable.
pub fn reference_groups(
    trainables: impl IntoIterator<Item = Trainable>,
    hyper: &GroupHyper,
) -> Vec<ParamGroup> {
    let mut groups = vec![
        ParamGroup {
            name: "mask".into(),
            params: vec![],
            lr: hyper.mask_lr,
            weight_decay: hyper.mask_weight_decay,
        },
        ParamGroup {
            name: "decay".into(),
            params: vec![],
            lr: hyper.lr,
            weight_decay: hyper.weight_decay,
        },
        ParamGroup {
            name: "no_decay".into(),
            params: vec![],
            lr: hyper.lr,
            weight_decay: 0.0,
        },
    ];
    let mut all: Vec<Trainable> = trainables.into_iter().collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for t in all {
        let i = match t.role {
            Role::Mask => 0,
            Role::Decay => 1,
            Role::NoDecay => 2,
        };
        groups[i].params.push((t.name, t.var));
    }
    groups
}

/// Learning-rate multiplier as a function of the number of optimizer steps already taken.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Schedule {
    /// Always 1.
    Constant,
    /// `step/warmup` during warmup, then `(total − step)/(total − warmup)` down to 0
    /// (transformers' `get_linear_schedule_with_warmup`).
    LinearWarmupDecay {
        /// Warmup steps.
        warmup_steps: usize,
        /// Total steps.
        total_steps: usize,
    },
}

impl Schedule {
    /// Linear warmup over `warmup_ratio` of `total_steps`, then linear decay.
    pub fn warmup_ratio(warmup_ratio: f64, total_steps: usize) -> Self {
        Schedule::LinearWarmupDecay {
            warmup_steps: (warmup_ratio * total_steps as f64).ceil() as usize,
            total_steps,
        }
    }

    /// The multiplier for the step taken after `step` earlier steps.
    pub fn factor(&self, step: usize) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::LinearWarmupDecay {
                warmup_steps,
                total_steps,
            } => {
                if step < warmup_steps {
                    step as f64 / warmup_steps.max(1) as f64
                } else {
                    let rest = total_steps.saturating_sub(warmup_steps).max(1) as f64;
                    (total_steps.saturating_sub(step) as f64 / rest).max(0.0)
                }
            }
        }
    }
}

/// Scale the gradients of `vars` so that their global L2 norm is at most `max_norm`
/// (PyTorch's `clip_grad_norm_`). Returns the norm before clipping. Errors on a non-finite norm.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sq += if crate::fused::applies(g) {
                // one parallel pass in f64, no squared copy of the gradient
                crate::fused::sum_of_squares(g)?
            } else {
                g.to_dtype(candle_core::DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?
            };
        }
    }
    let norm = sq.sqrt();
    if !norm.is_finite() {
        return Err(PetlError::config(format!("gradient norm is {norm}")));
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                let scaled = (g * coef)?;
                grads.insert(v.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

/// AdamW's moments by variable name: `(m, v, t)` (first and second moment, steps taken).
pub type Moments = BTreeMap<String, (Tensor, Tensor, usize)>;

/// AdamW over parameter groups with a schedule.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    schedule: Schedule,
    step: usize,
    moments: HashMap<String, (Tensor, Tensor, usize)>,
}

impl AdamW {
    /// AdamW with β = (0.9, 0.999), ε = 1e-8.
    pub fn new(groups: Vec<ParamGroup>, schedule: Schedule) -> Self {
        Self::with_betas(groups, schedule, 0.9, 0.999, 1e-8)
    }

    /// AdamW with explicit β₁, β₂, ε.
    pub fn with_betas(
        groups: Vec<ParamGroup>,
        schedule: Schedule,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> Self {
        Self {
            groups,
            beta1,
            beta2,
            eps,
            schedule,
            step: 0,
            moments: HashMap::new(),
        }
    }

    /// The optimizer's state: the step count and each variable's moments `(m, v, t)` by name
    /// (copies: the optimizer updates its moments in place), for resumable training.
    pub fn state(&self) -> Result<(usize, Moments)> {
        let moments = self
            .moments
            .iter()
            .map(|(k, (m, v, t))| Ok((k.clone(), (m.copy()?, v.copy()?, *t))))
            .collect::<Result<_>>()?;
        Ok((self.step, moments))
    }

    /// Continue from a [`state`](Self::state): every moment must belong to a variable of the
    /// groups, with its shape.
    pub fn set_state(&mut self, step: usize, moments: Moments) -> Result<()> {
        let known: HashMap<&str, &Var> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(n, v)| (n.as_str(), v)))
            .collect();
        for (name, (m, v, _)) in &moments {
            let var = known.get(name.as_str()).ok_or_else(|| PetlError::Unknown {
                kind: "optimizer variable",
                name: name.clone(),
                known: known.keys().copied().collect::<Vec<_>>().join(", "),
            })?;
            for t in [m, v] {
                if t.dtype() != var.dtype() {
                    return Err(PetlError::config(format!(
                        "AdamW moment of {name} is {:?}, its variable {:?}",
                        t.dtype(),
                        var.dtype()
                    )));
                }
                if t.dims() != var.dims() {
                    return Err(PetlError::Shape {
                        name: format!("AdamW moment of {name}"),
                        expected: var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                }
            }
        }
        self.step = step;
        // copies of our own: the moments are updated in place, and the caller's tensors (or
        // two moments given as one tensor) must not change with them
        self.moments = moments
            .into_iter()
            .map(|(k, (m, v, t))| Ok((k, (m.contiguous()?.copy()?, v.contiguous()?.copy()?, t))))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// Every variable of every group.
    pub fn vars(&self) -> Vec<Var> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, v)| v.clone()))
            .collect()
    }

    /// The learning rate each group uses on the next step.
    pub fn current_lrs(&self) -> Vec<(String, f64)> {
        let f = self.schedule.factor(self.step);
        self.groups
            .iter()
            .map(|g| (g.name.clone(), g.lr * f))
            .collect()
    }

    /// One update. Variables without a gradient are skipped (as in PyTorch).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let factor = self.schedule.factor(self.step);
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        for g in &self.groups {
            let lr = g.lr * factor;
            for (name, var) in &g.params {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let grad = grad.to_dtype(var.dtype())?;
                let moments = self.moments.remove(name);
                let t = moments.as_ref().map_or(0, |(_, _, t)| *t) + 1;
                if crate::fused::applies(var.as_tensor())
                    && var.is_contiguous()
                    && !crate::fused::same_storage(&grad, var.as_tensor())
                {
                    // the same update in one parallel pass, in place (fused.rs): the
                    // variable's storage and its moments are overwritten, nothing allocated
                    let bc1 = 1.0 - b1.powi(t as i32);
                    let bc2 = 1.0 - b2.powi(t as i32);
                    let scalars = crate::fused::AdamWScalars {
                        beta1: b1 as f32,
                        one_minus_beta1: (1.0 - b1) as f32,
                        beta2: b2 as f32,
                        one_minus_beta2: (1.0 - b2) as f32,
                        eps: self.eps as f32,
                        step_size: (lr / bc1) as f32,
                        inv_sqrt_bias2: (1.0 / bc2.sqrt()) as f32,
                        decay: (g.weight_decay != 0.0)
                            .then_some((1.0 - lr * g.weight_decay) as f32),
                    };
                    let (m, v) = match moments {
                        Some((m, v, _)) => (m, v),
                        None => (var.zeros_like()?, var.zeros_like()?),
                    };
                    crate::fused::adamw_in_place(var.as_tensor(), &grad, &m, &v, &scalars)?;
                    self.moments.insert(name.clone(), (m, v, t));
                    continue;
                }
                let (m, v) = match moments {
                    Some((m, v, _)) => (m, v),
                    None => (grad.zeros_like()?, grad.zeros_like()?),
                };
                let m = ((m * b1)? + (&grad * (1.0 - b1))?)?;
                let v = ((v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
                let bc1 = 1.0 - b1.powi(t as i32);
                let bc2 = 1.0 - b2.powi(t as i32);
                let step_size = lr / bc1;
                let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
                let decayed = if g.weight_decay != 0.0 {
                    (var.as_tensor() * (1.0 - lr * g.weight_decay))?
                } else {
                    var.as_tensor().clone()
                };
                let new = (decayed - (m.div(&denom)? * step_size)?)?;
                var.set(&new)?;
                self.moments.insert(name.clone(), (m, v, t));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_update_matches_the_composed_update_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(8);
        let (p, g) = (rng.normal(5000, 1.0, &dev)?, rng.normal(5000, 0.1, &dev)?);
        let (m, v) = (
            rng.normal(5000, 0.01, &dev)?,
            rng.normal(5000, 0.01, &dev)?.sqr()?,
        );
        let (b1, b2, eps, lr, wd, t) = (0.9f64, 0.999f64, 1e-8f64, 3e-3f64, 0.01f64, 7);
        let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        // the composed update of AdamW::step, op for op
        let m1 = ((&m * b1)? + (&g * (1.0 - b1))?)?;
        let v1 = ((&v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let denom = ((v1.sqrt()? / bc2.sqrt())? + eps)?;
        let composed = ((&p * (1.0 - lr * wd))? - (m1.div(&denom)? * (lr / bc1))?)?;
        let scalars = crate::fused::AdamWScalars {
            beta1: b1 as f32,
            one_minus_beta1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            one_minus_beta2: (1.0 - b2) as f32,
            eps: eps as f32,
            step_size: (lr / bc1) as f32,
            inv_sqrt_bias2: (1.0 / bc2.sqrt()) as f32,
            decay: Some((1.0 - lr * wd) as f32),
        };
        let host = |t: &Tensor| t.to_vec1::<f32>();
        // in place: copies of p, m, v are overwritten
        let (fp, fm, fv) = (p.copy()?, m.copy()?, v.copy()?);
        crate::fused::adamw_in_place(&fp, &g, &fm, &fv, &scalars)?;
        assert_eq!(host(&fp)?, host(&composed)?);
        assert_eq!((host(&fm)?, host(&fv)?), (host(&m1)?, host(&v1)?));
        // mismatched lengths and shared storages are errors, not a panic or a deadlock
        let short = rng.normal(4999, 1.0, &dev)?;
        assert!(crate::fused::adamw_in_place(&fp, &short, &fm, &fv, &scalars).is_err());
        assert!(crate::fused::adamw_in_place(&fp, &g, &fm, &fm, &scalars).is_err());
        assert!(crate::fused::adamw_in_place(&fp, &fp.detach(), &fm, &fv, &scalars).is_err());
        assert_eq!(
            host(&fp)?,
            host(&composed)?,
            "a refused update changed nothing"
        );
        Ok(())
    }

    #[test]
    fn step_updates_in_place_and_state_is_a_snapshot() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(9);
        let start = rng.normal((40, 30), 1.0, &dev)?;
        let optimizer = |var: &Var| {
            let group = ParamGroup {
                name: "decay".into(),
                lr: 1e-2,
                weight_decay: 0.01,
                params: vec![("w".into(), var.clone())],
            };
            AdamW::new(vec![group], Schedule::Constant)
        };
        // the gradient at the variable's current value
        let grads = |var: &Var| (var.as_tensor().sqr()?.sum_all()? * 0.5)?.backward();
        let var = Var::from_tensor(&start)?;
        let alias = var.as_tensor().detach(); // shares the variable's storage
        let mut opt = optimizer(&var);
        opt.step(&grads(&var)?)?;
        let after_one = var.as_tensor().copy()?;
        assert!(max_abs_diff(&after_one, &start)? > 0.0);
        // the variable's own storage was updated: every view of it sees the new values
        assert_eq!(max_abs_diff(&alias, &after_one)?, 0.0);
        let (steps, snapshot) = opt.state()?;
        let m_then = snapshot["w"].0.copy()?;
        opt.step(&grads(&var)?)?;
        // the snapshot taken after the first step did not move with the moments
        assert_eq!(max_abs_diff(&snapshot["w"].0, &m_then)?, 0.0);
        assert!(max_abs_diff(&opt.state()?.1["w"].0, &m_then)? > 0.0);
        // resuming from the snapshot takes the same second step, and leaves it untouched
        let resumed_var = Var::from_tensor(&after_one)?;
        let mut resumed = optimizer(&resumed_var);
        resumed.set_state(steps, snapshot.clone())?;
        resumed.step(&grads(&resumed_var)?)?;
        assert_eq!(max_abs_diff(resumed_var.as_tensor(), var.as_tensor())?, 0.0);
        assert_eq!(max_abs_diff(&snapshot["w"].0, &m_then)?, 0.0);
        Ok(())
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
    }

    #[test]
    fn gradient_norm_is_the_f64_sum_of_squares() -> Result<()> {
        let dev = Device::Cpu;
        let mut rng = crate::rng::PetlRng::seed(10);
        let x = rng.normal(100_003, 1.0, &dev)?;
        let want: f64 = x
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        let got = crate::fused::sum_of_squares(&x)?;
        assert!((got - want).abs() <= 1e-12 * want, "{got} vs {want}");
        // a strided view is read through a contiguous copy
        let m = rng.normal((300, 7), 1.0, &dev)?;
        let t = m.t()?;
        let want: f64 = m
            .to_vec2::<f32>()?
            .iter()
            .flatten()
            .map(|&v| (v as f64).powi(2))
            .sum();
        assert!((crate::fused::sum_of_squares(&t)? - want).abs() <= 1e-12 * want);
        Ok(())
    }

    #[test]
    fn schedule_boundaries() {
        let s = Schedule::LinearWarmupDecay {
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.factor(0), 0.0);
        assert_eq!(s.factor(5), 0.5);
        assert_eq!(s.factor(10), 1.0);
        assert_eq!(s.factor(60), 0.5);
        assert_eq!(s.factor(110), 0.0);
        assert_eq!(s.factor(500), 0.0);
        assert_eq!(
            Schedule::warmup_ratio(0.1, 100),
            Schedule::LinearWarmupDecay {
                warmup_steps: 10,
                total_steps: 100
            }
        );
        let none = Schedule::LinearWarmupDecay {
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(none.factor(0), 1.0);
        assert_eq!(none.factor(2), 0.5);
    }

    #[test]
    fn groups_get_their_own_lr_and_decay() -> Result<()> {
        let dev = Device::Cpu;
        let mk = |x: f32| Var::from_vec(vec![x; 2], 2, &dev).unwrap();
        let vars = [
            ("mask.0.down".to_string(), mk(1.0)),
            ("adapter.down.weight".to_string(), mk(1.0)),
            ("adapter.down.bias".to_string(), mk(1.0)),
        ];
        let roles = [Role::Mask, Role::Decay, Role::NoDecay];
        let hyper = GroupHyper {
            lr: 0.1,
            mask_lr: 0.01,
            weight_decay: 0.5,
            mask_weight_decay: 0.2,
        };
        let trainables = vars
            .iter()
            .zip(roles)
            .map(|((n, v), r)| Trainable::new(n.clone(), v.clone(), r));
        let groups = reference_groups(trainables, &hyper);
        assert_eq!(groups[0].params[0].0, "mask.0.down");
        assert_eq!(groups[1].params[0].0, "adapter.down.weight");
        assert_eq!(groups[2].params[0].0, "adapter.down.bias");
        let mut opt = AdamW::new(groups, Schedule::Constant);
        let loss = vars
            .iter()
            .map(|(_, v)| v.as_tensor().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        opt.step(&loss.backward()?)?;
        // first Adam step moves by lr (m/sqrt(v) = 1 for a constant gradient) after decay
        let get = |i: usize| vars[i].1.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        let expect = |lr: f64, wd: f64| 1.0 * (1.0 - lr * wd) - lr / (1.0 + 1e-8);
        assert!((get(0) - expect(0.01, 0.2)).abs() < 1e-6, "{}", get(0));
        assert!((get(1) - expect(0.1, 0.5)).abs() < 1e-6, "{}", get(1));
        assert!((get(2) - expect(0.1, 0.0)).abs() < 1e-6, "{}", get(2));
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_vec(vec![1f32, 1.0], 2, &dev)?;
        let b = Var::from_vec(vec![1f32], 1, &dev)?;
        // d/da = (3, 4) · 1, d/db = 0 → norm 5
        let w = Tensor::new(&[3f32, 4.0], &dev)?;
        let loss = ((a.as_tensor() * &w)?.sum_all()? + (b.as_tensor() * 0.0)?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6);
        let g = grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?;
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
        // below the threshold: untouched
        let mut grads = loss.backward()?;
        clip_grad_norm(&mut grads, std::slice::from_ref(&a), 10.0)?;
        assert_eq!(
            grads.get(a.as_tensor()).unwrap().to_vec1::<f32>()?,
            vec![3.0, 4.0]
        );
        Ok(())
    }
}
