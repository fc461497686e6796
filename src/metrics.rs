//! Evaluation metrics (GLUE conventions) and the per-task scores of method page §4.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::GlueTask;

/// Fraction of exact matches.
pub fn accuracy(pred: &[f32], gold: &[f32]) -> f64 {
    if gold.is_empty() {
        return f64::NAN;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

fn confusion(pred: &[f32], gold: &[f32]) -> (f64, f64, f64, f64) {
    let (mut tp, mut tn, mut fp, mut fneg) = (0.0, 0.0, 0.0, 0.0);
    for (p, g) in pred.iter().zip(gold) {
        match (*p == 1.0, *g == 1.0) {
            (true, true) => tp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fneg += 1.0,
        }
    }
    (tp, tn, fp, fneg)
}

/// Binary F1 of the positive class (label 1); 0 when there are no true positives.
pub fn f1(pred: &[f32], gold: &[f32]) -> f64 {
    let (tp, _, fp, fneg) = confusion(pred, gold);
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fneg)
    }
}

/// Matthews correlation coefficient of binary predictions (0 when undefined, as sklearn).
pub fn matthews(pred: &[f32], gold: &[f32]) -> f64 {
    let (tp, tn, fp, fneg) = confusion(pred, gold);
    let denom = ((tp + fp) * (tp + fneg) * (tn + fp) * (tn + fneg)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fneg) / denom
    }
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(x: &[f32], y: &[f32]) -> f64 {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    pearson64(&x, &y)
}

fn pearson64(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    if n < 2 {
        return f64::NAN;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks with ties averaged (1-based).
fn ranks(x: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of tie-averaged ranks).
pub fn spearman(x: &[f32], y: &[f32]) -> f64 {
    pearson64(&ranks(x), &ranks(y))
}

/// The metrics of an evaluation (×100). Only the metrics of the task are present; `selection`
/// is the number model selection maximizes (the task metric, or the mean of the two for MRPC,
/// QQP and STS-B: the "combined score"). NaN (e.g. a correlation of constant predictions) is
/// written as `null` in JSON and read back as NaN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Accuracy.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_as_null::deserialize_some"
    )]
    pub accuracy: Option<f64>,
    /// Binary F1 of the positive class.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_as_null::deserialize_some"
    )]
    pub f1: Option<f64>,
    /// Matthews correlation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_as_null::deserialize_some"
    )]
    pub mcc: Option<f64>,
    /// Pearson correlation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_as_null::deserialize_some"
    )]
    pub pearson: Option<f64>,
    /// Spearman correlation.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nan_as_null::deserialize_some"
    )]
    pub spearman: Option<f64>,
    /// The model-selection number.
    #[serde(with = "nan_as_null")]
    pub selection: f64,
}

mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }

    /// A metric that is present: `null` is NaN (an absent metric is `None` by `default`).
    pub fn deserialize_some<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        deserialize(d).map(Some)
    }
}

impl Metrics {
    /// The reported numbers of the task, by name (`selection` excluded).
    pub fn numbers(&self) -> Vec<(&'static str, f64)> {
        [
            ("accuracy", self.accuracy),
            ("f1", self.f1),
            ("mcc", self.mcc),
            ("pearson", self.pearson),
            ("spearman", self.spearman),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }

    /// `accuracy 81.20, f1 85.00`-style summary.
    pub fn summary(&self) -> String {
        self.numbers()
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The metrics of a task on predictions (class indices, or scores for STS-B/regression).
pub fn task_metrics(
    task: Option<GlueTask>,
    regression: bool,
    pred: &[f32],
    gold: &[f32],
) -> Metrics {
    let pct = |v: f64| 100.0 * v;
    let mut m = Metrics::default();
    match task {
        Some(GlueTask::Cola) => m.mcc = Some(pct(matthews(pred, gold))),
        Some(GlueTask::Mrpc) | Some(GlueTask::Qqp) => {
            m.accuracy = Some(pct(accuracy(pred, gold)));
            m.f1 = Some(pct(f1(pred, gold)));
        }
        Some(GlueTask::Stsb) => {
            m.pearson = Some(pct(pearson(pred, gold)));
            m.spearman = Some(pct(spearman(pred, gold)));
        }
        _ if regression => {
            m.pearson = Some(pct(pearson(pred, gold)));
            m.spearman = Some(pct(spearman(pred, gold)));
        }
        _ => m.accuracy = Some(pct(accuracy(pred, gold))),
    }
    let numbers = m.numbers();
    m.selection = numbers.iter().map(|(_, v)| v).sum::<f64>() / numbers.len() as f64;
    m
}

/// The reported GLUE average: the mean of the 11 numbers (CoLA MCC; SST-2, MNLI, QNLI, RTE
/// accuracy; MRPC and QQP accuracy and F1; STS-B Pearson and Spearman). `None` unless all
/// eight tasks are present.
pub fn glue_average(per_task: &BTreeMap<GlueTask, Metrics>) -> Option<f64> {
    let mut numbers = Vec::new();
    for t in GlueTask::ALL {
        numbers.extend(per_task.get(&t)?.numbers().into_iter().map(|(_, v)| v));
    }
    (numbers.len() == 11).then(|| numbers.iter().sum::<f64>() / 11.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_values() {
        assert_eq!(accuracy(&[1.0, 0.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 0.0]), 0.5);
        // tp = 2, fp = 1, fn = 1 → F1 = 4/6
        assert!((f1(&[1.0, 0.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 0.0]) - 2.0 / 3.0).abs() < 1e-12);
        // tp = 2, tn = 0, fp = 1, fn = 1 → (0 − 1)/sqrt(3·3·1·1) = −1/3
        assert!((matthews(&[1.0, 0.0, 1.0, 1.0], &[1.0, 1.0, 1.0, 0.0]) + 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(matthews(&[1.0, 1.0], &[1.0, 0.0]), 0.0); // undefined → 0
        assert!((matthews(&[1.0, 0.0, 1.0, 0.0], &[1.0, 0.0, 1.0, 0.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        // x = (1,2,3,4), y = (1,3,2,4): r = 0.8
        assert!((pearson(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[0.0, 1.0]).is_nan());
        // monotone but non-linear: Spearman 1, Pearson < 1
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 4.0, 9.0, 100.0]) - 1.0).abs() < 1e-12);
        // ties averaged: ranks of (1, 2, 2, 3) = (1, 2.5, 2.5, 4)
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
        // rho for x=(1,2,3,4,5), y=(5,6,7,8,7): d = ranks differ → hand value 0.8207826816681233
        assert!(
            (spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]) - 0.8207826816681233)
                .abs()
                < 1e-12
        );
    }

    #[test]
    fn task_scores_and_glue_average() {
        let m = task_metrics(
            Some(GlueTask::Mrpc),
            false,
            &[1.0, 0.0, 1.0, 1.0],
            &[1.0, 1.0, 1.0, 0.0],
        );
        assert!((m.accuracy.unwrap() - 50.0).abs() < 1e-9);
        assert!((m.f1.unwrap() - 200.0 / 3.0).abs() < 1e-9);
        assert!((m.selection - (50.0 + 200.0 / 3.0) / 2.0).abs() < 1e-9);
        assert_eq!(m.mcc, None);
        let mut all = BTreeMap::new();
        for t in GlueTask::ALL {
            let mut m = Metrics::default();
            match t {
                GlueTask::Mrpc | GlueTask::Qqp => {
                    m.accuracy = Some(80.0);
                    m.f1 = Some(90.0);
                }
                GlueTask::Stsb => {
                    m.pearson = Some(80.0);
                    m.spearman = Some(90.0);
                }
                _ => m.accuracy = Some(70.0),
            }
            all.insert(t, m);
        }
        // 5 × 70 + 3 × (80 + 90) = 860 over 11 numbers
        assert!((glue_average(&all).unwrap() - 860.0 / 11.0).abs() < 1e-9);
        all.remove(&GlueTask::Rte);
        assert!(glue_average(&all).is_none());
    }

    #[test]
    fn nan_metrics_round_trip_through_json() {
        let m = task_metrics(None, true, &[1.0, 1.0, 1.0], &[0.0, 1.0, 2.0]);
        assert!(m.selection.is_nan());
        let json = serde_json::to_string(&m).unwrap();
        let back: Metrics = serde_json::from_str(&json).unwrap();
        assert!(back.selection.is_nan() && back.pearson.is_none_or(f64::is_nan));
    }
}
