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

impl StorageReport {
    /// Compute the report of a plan.
    pub fn from_plan(plan: &Plan, backbone_params: usize, head_params: usize) -> Result<Self> {
        let prototype_floats = plan.stored_floats();
        let mask_entries = plan.mask_entries();
        let mask_bytes: usize = plan
            .scores
            .iter()
            .map(|s| s.shape.iter().product::<usize>().div_ceil(8))
            .sum();
        let f32eq = prototype_floats as f64 + mask_entries as f64 / 32.0;
        let baseline = Plan::new(
            &PetlConfig::unshared(plan.config.method.clone()),
            &plan.layout,
        )?;
        let baseline_floats = baseline.stored_floats();
        Ok(Self {
            description: plan.config.describe(),
            prototype_floats,
            training_prototype_floats: plan.training_floats(),
            mask_entries,
            float32_equivalents: f32eq,
            payload_bytes: prototype_floats * 4 + mask_bytes,
            backbone_params,
            percent_of_backbone: if backbone_params > 0 {
                100.0 * f32eq / backbone_params as f64
            } else {
                0.0
            },
            baseline_floats,
            ratio_to_baseline: f32eq / baseline_floats as f64,
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
}
