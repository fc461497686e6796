//! The storage report (method page §6): prototype floats at 32 bits, mask entries at 1 bit.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::plan::Plan;
use crate::spec::PetlConfig;

/// What one trained PETL state costs to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageReport {
    /// `adapter share=layers mask=binary keep=0.5`, …
    pub description: String,
    /// Prototype floats as stored (for prefixes: the materialized prefix, not the MLP).
    pub prototype_floats: usize,
    /// Prototype floats while training (prefix MLP included).
    pub training_prototype_floats: usize,
    /// Mask entries (1 bit each).
    pub mask_entries: usize,
    /// `prototype_floats + mask_entries / 32`.
    pub float32_equivalents: f64,
    /// Exact payload bytes: 4 per float plus ⌈entries/8⌉ per mask tensor.
    pub payload_bytes: usize,
    /// Parameters of the frozen backbone (head excluded).
    pub backbone_params: usize,
    /// `float32_equivalents` as % of `backbone_params`.
    pub percent_of_backbone: f64,
    /// Floats of the unshared baseline of the same method (one module per layer, no masks).
    pub baseline_floats: usize,
    /// `float32_equivalents / baseline_floats`.
    pub ratio_to_baseline: f64,
    /// Trainable head parameters (stored as f32, not counted above).
    pub head_params: usize,
}

/// `floats` as % of `backbone_params` (0 for an empty backbone).
fn percent_of(floats: f64, backbone_params: usize) -> f64 {
    if backbone_params > 0 {
        100.0 * floats / backbone_params as f64
    } else {
        0.0
    }
}

impl StorageReport {
    /// Compute the report of a plan. Every count is computed with checked arithmetic: sizes
    /// that do not fit in a `usize` are a [`PetlError::Config`](crate::PetlError::Config)
    /// naming the value, never a wrapped number.
    pub fn from_plan(plan: &Plan, backbone_params: usize, head_params: usize) -> Result<Self> {
        let prototype_floats = plan.checked_stored_floats()?;
        let mask_entries = plan.checked_mask_entries()?;
        let payload_bytes = plan.checked_payload_bytes()?;
        let f32eq = prototype_floats as f64 + mask_entries as f64 / 32.0;
        let baseline = Plan::new(
            &PetlConfig::unshared(plan.config.method.clone()),
            &plan.layout,
        )?;
        let baseline_floats = baseline.checked_stored_floats()?;
        Ok(Self {
            description: plan.config.describe(),
            prototype_floats,
            training_prototype_floats: plan.checked_training_floats()?,
            mask_entries,
            float32_equivalents: f32eq,
            payload_bytes,
            backbone_params,
            percent_of_backbone: percent_of(f32eq, backbone_params),
            baseline_floats,
            ratio_to_baseline: f32eq / baseline_floats as f64,
            head_params,
        })
    }

    /// The report of full fine-tuning (the paper's reference row): no PETL module, the
    /// `trained_floats` backbone weights that train are stored whole (as f32), against a
    /// backbone of `backbone_params` (which may count weights the task never uses, e.g. a
    /// pooler). The "unshared baseline" of full fine-tuning is itself.
    pub fn full_fine_tuning(
        trained_floats: usize,
        backbone_params: usize,
        head_params: usize,
    ) -> Result<Self> {
        let payload_bytes = trained_floats.checked_mul(4).ok_or_else(|| {
            crate::PetlError::config(format!(
                "{trained_floats} trained floats overflow a byte count"
            ))
        })?;
        let f32eq = trained_floats as f64;
        Ok(Self {
            description: "full fine-tuning (every backbone weight trains)".to_string(),
            prototype_floats: trained_floats,
            training_prototype_floats: trained_floats,
            mask_entries: 0,
            float32_equivalents: f32eq,
            payload_bytes,
            backbone_params,
            percent_of_backbone: percent_of(f32eq, backbone_params),
            baseline_floats: trained_floats,
            ratio_to_baseline: 1.0,
            head_params,
        })
    }

    /// A small human-readable table.
    pub fn to_table(&self) -> String {
        format!(
            "storage ({})\n  prototype floats (32-bit)   {:>12}\n  mask entries (1-bit)        {:>12}\n  float32-equivalents         {:>12}\n  payload bytes               {:>12}\n  % of backbone ({:>11})  {:>11.3}%\n  unshared baseline floats    {:>12}\n  ratio to baseline           {:>11.1}%\n  head params (not counted)   {:>12}",
            self.description,
            self.prototype_floats,
            self.mask_entries,
            self.float32_equivalents,
            self.payload_bytes,
            self.backbone_params,
            self.percent_of_backbone,
            self.baseline_floats,
            100.0 * self.ratio_to_baseline,
            self.head_params
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PetlLayout;
    use crate::spec::{Method, PetlConfig};

    /// roberta-base: 124,645,632 parameters (embeddings, 12 layers, pooler).
    const ROBERTA_BASE: usize = 124_645_632;

    fn report(cfg: PetlConfig) -> StorageReport {
        let layout = PetlLayout::single_task(768, 12, 12);
        StorageReport::from_plan(&Plan::new(&cfg, &layout).unwrap(), ROBERTA_BASE, 0).unwrap()
    }

    #[test]
    fn reproduces_method_page_table() {
        let a = report(PetlConfig::pro(Method::ADAPTER));
        assert_eq!(a.prototype_floats, 99_136);
        assert_eq!(a.mask_entries, 12 * 98_304);
        assert_eq!(a.float32_equivalents, 136_000.0);
        assert_eq!(a.baseline_floats, 1_189_632);
        assert_eq!(format!("{:.3}", a.percent_of_backbone), "0.109");
        let l = report(PetlConfig::pro(Method::LORA));
        assert_eq!(l.float32_equivalents, 135_168.0);
        assert_eq!(l.baseline_floats, 1_179_648);
        assert_eq!(format!("{:.3}", l.percent_of_backbone), "0.108");
        let p = report(PetlConfig::pro(Method::PREFIX));
        assert_eq!(p.prototype_floats, 98_304);
        assert_eq!(p.float32_equivalents, 135_168.0);
        assert_eq!(p.baseline_floats, 1_179_648);
        let base = report(PetlConfig::unshared(Method::ADAPTER));
        assert_eq!(base.float32_equivalents, 1_189_632.0);
        assert_eq!(format!("{:.3}", base.percent_of_backbone), "0.954");
        assert_eq!(
            format!(
                "{:.3}",
                report(PetlConfig::unshared(Method::LORA)).percent_of_backbone
            ),
            "0.946"
        );
        assert!((a.ratio_to_baseline - 0.1143).abs() < 1e-3);
        assert_eq!(a.payload_bytes, 99_136 * 4 + 12 * 98_304 / 8);
    }

    #[test]
    fn full_fine_tuning_stores_the_backbone() {
        let r =
            StorageReport::full_fine_tuning(ROBERTA_BASE - 590_592, ROBERTA_BASE, 592_130).unwrap();
        assert_eq!(r.float32_equivalents, (ROBERTA_BASE - 590_592) as f64);
        assert_eq!(r.mask_entries, 0);
        assert_eq!(r.payload_bytes, 4 * (ROBERTA_BASE - 590_592));
        assert!((r.percent_of_backbone - 99.526).abs() < 1e-3);
        assert_eq!(r.ratio_to_baseline, 1.0);
        assert!(StorageReport::full_fine_tuning(usize::MAX, 1, 0).is_err());
    }

    #[test]
    fn huge_shapes_are_config_errors_not_wrapped_counts() {
        use crate::error::PetlError;
        let config_err = |cfg: PetlConfig, layout: PetlLayout| -> String {
            match Plan::new(&cfg, &layout) {
                Err(PetlError::Config(msg)) => msg,
                Err(e) => panic!("expected a configuration error, got {e}"),
                Ok(plan) => match StorageReport::from_plan(&plan, ROBERTA_BASE, 0) {
                    Err(PetlError::Config(msg)) => msg,
                    other => panic!("expected an overflow error, got {other:?}"),
                },
            }
        };
        // hidden 2^32: every adapter weight fits (2^32/12 × 2^32 < 2^64) but the 24 masks do not
        let msg = config_err(
            PetlConfig::pro(Method::ADAPTER),
            PetlLayout::single_task(1 << 32, 1, 12),
        );
        assert!(msg.contains("size overflow"), "{msg}");
        assert!(msg.contains("mask entries"), "{msg}");
        assert!(msg.contains("hidden 4294967296, 12 layers"), "{msg}");
        // one tensor's element count overflows
        let msg = config_err(
            PetlConfig::pro(Method::Adapter {
                size: crate::spec::AdapterSize::Bottleneck(1 << 40),
                activation: crate::spec::Activation::Relu,
                init_std: 0.02,
            }),
            PetlLayout::single_task(1 << 32, 1, 12),
        );
        assert!(
            msg.contains("`adapter.down.weight` of shape [1099511627776 × 4294967296]"),
            "{msg}"
        );
        // the prefix width 2·H overflows
        let msg = config_err(
            PetlConfig::pro(Method::PREFIX),
            PetlLayout::single_task(1 << 63, 1, 12),
        );
        assert!(
            msg.contains("prefix width = 2 × hidden (2 × 9223372036854775808)"),
            "{msg}"
        );
        // unshared prefix 2·H·L overflows
        let msg = config_err(
            PetlConfig::unshared(Method::PREFIX),
            PetlLayout::single_task(1 << 60, 1, 12),
        );
        assert!(
            msg.contains("unshared prefix width = 2·hidden × layers"),
            "{msg}"
        );
        // LoRA: the shared plan fits (2^57 floats, 2^63 mask entries), its unshared baseline
        // (64 layers × 2^57 floats × 4 bytes) does not: the report says so
        let lora = PetlConfig::pro(Method::Lora {
            r: 1 << 24,
            alpha: 1.0,
            targets: std::borrow::Cow::Borrowed(&[crate::spec::LoraTarget::Q]),
        });
        let layout = PetlLayout::single_task(1 << 32, 1, 64);
        let plan = Plan::new(&lora, &layout).unwrap();
        assert_eq!(plan.mask_entries(), 1 << 63);
        let msg = config_err(lora, layout);
        assert!(msg.contains("prototype bytes = stored floats × 4"), "{msg}");
        // payload bytes = 4 × floats overflows while the float count itself fits
        let msg = config_err(
            PetlConfig::unshared(Method::Adapter {
                size: crate::spec::AdapterSize::Bottleneck(1 << 29),
                activation: crate::spec::Activation::Relu,
                init_std: 0.02,
            }),
            PetlLayout::single_task(1 << 32, 1, 1),
        );
        assert!(msg.contains("prototype bytes = stored floats × 4"), "{msg}");
    }

    #[test]
    fn large_but_valid_shapes_are_exact() {
        // 2^20 hidden, 48 layers: big numbers, no overflow, exact counts
        let layout = PetlLayout::single_task(1 << 20, 16, 48);
        let plan = Plan::new(&PetlConfig::pro(Method::ADAPTER), &layout).unwrap();
        let r = StorageReport::from_plan(&plan, usize::MAX, 0).unwrap();
        let d = (1usize << 20) / 12;
        assert_eq!(r.prototype_floats, 2 * d * (1 << 20) + d + (1 << 20));
        assert_eq!(r.mask_entries, 48 * 2 * d * (1 << 20));
        assert_eq!(r.payload_bytes, 4 * r.prototype_floats + r.mask_entries / 8);
        assert_eq!(plan.mask_entries(), r.mask_entries);
    }
}
