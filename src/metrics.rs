//! Evaluation metrics (GLUE conventions) and the per-task scores of method page §4.

use std::collections::BTreeMap;

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

/// The metrics of a task on predictions (class indices, or scores for STS-B), ×100, plus
/// `selection`: the number model selection maximizes (the task metric, or the mean of the two
/// for MRPC, QQP and STS-B: the "combined score").
pub fn task_metrics(
    task: Option<GlueTask>,
    regression: bool,
    pred: &[f32],
    gold: &[f32],
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let pct = |v: f64| 100.0 * v;
    match task {
        Some(GlueTask::Cola) => {
            m.insert("mcc".into(), pct(matthews(pred, gold)));
        }
        Some(GlueTask::Mrpc) | Some(GlueTask::Qqp) => {
            m.insert("accuracy".into(), pct(accuracy(pred, gold)));
            m.insert("f1".into(), pct(f1(pred, gold)));
        }
        Some(GlueTask::Stsb) => {
            m.insert("pearson".into(), pct(pearson(pred, gold)));
            m.insert("spearman".into(), pct(spearman(pred, gold)));
        }
        _ if regression => {
            m.insert("pearson".into(), pct(pearson(pred, gold)));
            m.insert("spearman".into(), pct(spearman(pred, gold)));
        }
        _ => {
            m.insert("accuracy".into(), pct(accuracy(pred, gold)));
        }
    }
    let selection = m.values().sum::<f64>() / m.len() as f64;
    m.insert("selection".into(), selection);
    m
}

/// The reported GLUE average: the mean of the 11 numbers (CoLA MCC; SST-2, MNLI, QNLI, RTE
/// accuracy; MRPC and QQP accuracy and F1; STS-B Pearson and Spearman). `None` unless all
/// eight tasks are present.
pub fn glue_average(per_task: &BTreeMap<GlueTask, BTreeMap<String, f64>>) -> Option<f64> {
    let mut numbers = Vec::new();
    for t in GlueTask::ALL {
        let m = per_task.get(&t)?;
        for (k, v) in m {
            if k != "selection" {
                numbers.push(*v);
            }
        }
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
        assert!((m["accuracy"] - 50.0).abs() < 1e-9 && (m["f1"] - 200.0 / 3.0).abs() < 1e-9);
        assert!((m["selection"] - (50.0 + 200.0 / 3.0) / 2.0).abs() < 1e-9);
        let mut all = BTreeMap::new();
        for t in GlueTask::ALL {
            let mut m = BTreeMap::new();
            match t {
                GlueTask::Mrpc | GlueTask::Qqp => {
                    m.insert("accuracy".to_string(), 80.0);
                    m.insert("f1".to_string(), 90.0);
                }
                GlueTask::Stsb => {
                    m.insert("pearson".to_string(), 80.0);
                    m.insert("spearman".to_string(), 90.0);
                }
                _ => {
                    m.insert("accuracy".to_string(), 70.0);
                }
            }
            m.insert("selection".to_string(), 0.0);
            all.insert(t, m);
        }
        // 5 × 70 + 3 × (80 + 90) = 860 over 11 numbers
        assert!((glue_average(&all).unwrap() - 860.0 / 11.0).abs() < 1e-9);
        all.remove(&GlueTask::Rte);
        assert!(glue_average(&all).is_none());
    }
}
