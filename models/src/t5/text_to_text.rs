//! T5 as a [`TaskModel`]: text-to-text classification and regression (method page §5).
//!
//! Targets are label strings ("0", "1", "2"; STS-B: the score rounded to one decimal) turned
//! into token ids with their end token; the loss is label-smoothed NLL summed over target
//! tokens. Prediction generates greedily up to the longest label and compares the output with
//! every label's token ids: an output that is no label counts as wrong (method page §5: −1; for
//! classes an index no class has). One model serves many tasks: each batch carries its task, whose
//! masks the forward pass uses.

use std::collections::BTreeMap;

use candle_core::Tensor;
use propetl_runtime::task::pad_batch;
use propetl_runtime::{
    Batch, Example, ForwardMode, PetlError, PetlState, Prediction, ProPetlModel, TaskKind,
    TaskModel, Trainable,
};

use super::generate::{until_eos, GenerationConfig};
use super::variants::Seq2Seq;

/// One label of a task: its text, its target token ids (end token included) and the value a
/// generation of it stands for (the class index, or the score).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTarget {
    /// The label as text ("1", "3.4").
    pub text: String,
    /// Its target ids, ending with the end-of-sequence token.
    pub ids: Vec<u32>,
    /// Class index or score.
    pub value: f32,
}

/// What a task predicts and its labels as targets.
#[derive(Debug, Clone, PartialEq)]
pub struct TextTask {
    /// Classification or regression.
    pub kind: TaskKind,
    /// Every label the model may generate.
    pub labels: Vec<LabelTarget>,
}

/// A T5 variant as a multi-task text-to-text [`TaskModel`].
pub struct T5TextToText {
    inner: Box<dyn Seq2Seq>,
    tasks: BTreeMap<String, TextTask>,
}

impl T5TextToText {
    /// Wrap a T5 variant; `tasks` gives each task's kind and label targets. Every task must
    /// be one the PETL state has masks for.
    pub fn new(inner: Box<dyn Seq2Seq>, tasks: BTreeMap<String, TextTask>) -> crate::Result<Self> {
        let known = &inner.petl().layout().tasks;
        for (name, t) in &tasks {
            if !known.contains(name) {
                return Err(crate::ModelError::Config(format!(
                    "task `{name}` has no masks in this model (its tasks: {})",
                    known.join(", ")
                )));
            }
            if t.labels.is_empty() || t.labels.iter().any(|l| l.ids.is_empty()) {
                return Err(crate::ModelError::Config(format!(
                    "task `{name}` needs at least one label with non-empty target ids"
                )));
            }
        }
        Ok(Self { inner, tasks })
    }

    /// Greedy answers of `task` for every input row, up to its longest label: the generated
    /// ids and the label they spell, if any (an answer that is no label is wrong).
    pub fn answer(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        task: &str,
    ) -> propetl_runtime::Result<Vec<(Vec<u32>, Option<&LabelTarget>)>> {
        let text_task = self.task(task)?;
        let cfg = GenerationConfig {
            max_new_tokens: text_task
                .labels
                .iter()
                .map(|l| l.ids.len())
                .max()
                .unwrap_or(1),
            ..Default::default()
        };
        let eos = self.inner.config().eos_token_id;
        let generated = self
            .inner
            .generate(input_ids, attention_mask, task, &cfg)
            .map_err(crate::ModelError::into_petl)?;
        Ok(generated
            .into_iter()
            .map(|ids| {
                let out = until_eos(&ids, eos);
                let hit = text_task
                    .labels
                    .iter()
                    .find(|l| until_eos(&l.ids, eos) == out);
                (ids, hit)
            })
            .collect())
    }

    /// The wrapped T5 variant.
    pub fn inner(&self) -> &dyn Seq2Seq {
        self.inner.as_ref()
    }

    fn task(&self, name: &str) -> propetl_runtime::Result<&TextTask> {
        self.tasks.get(name).ok_or_else(|| PetlError::Unknown {
            kind: "text-to-text task",
            name: name.to_string(),
            known: self.tasks.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

impl ProPetlModel for T5TextToText {
    fn petl(&self) -> &PetlState {
        self.inner.petl()
    }
    fn petl_mut(&mut self) -> &mut PetlState {
        self.inner.petl_mut()
    }
    fn num_layers(&self) -> usize {
        self.inner.num_layers()
    }
}

impl TaskModel for T5TextToText {
    /// The kind of the first task (see [`task_kind_of`](TaskModel::task_kind_of)).
    fn task_kind(&self) -> TaskKind {
        self.tasks
            .values()
            .next()
            .map_or(TaskKind::Classification { num_labels: 2 }, |t| t.kind)
    }

    fn task_kind_of(&self, task: &str) -> TaskKind {
        self.tasks.get(task).map_or(self.task_kind(), |t| t.kind)
    }

    fn collate(
        &self,
        examples: &[&Example],
        max_len: usize,
        task: &str,
    ) -> propetl_runtime::Result<Batch> {
        let cfg = self.inner.config();
        let pad = cfg.pad_token_id;
        let dev = self.inner.petl().device();
        let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
        let (input_ids, attention_mask) = pad_batch(&seqs, max_len, pad, dev)?;
        if let Some(e) = examples.iter().find(|e| e.target_ids.is_empty()) {
            return Err(PetlError::Config(format!(
                "a text-to-text example needs target ids (label {})",
                e.label
            )));
        }
        let t = examples
            .iter()
            .map(|e| e.target_ids.len())
            .max()
            .unwrap_or(1);
        let start = cfg.decoder_start_token_id.unwrap_or(pad);
        let mut labels = Vec::with_capacity(examples.len() * t);
        let mut decoder = Vec::with_capacity(examples.len() * t);
        for e in examples {
            let n = e.target_ids.len();
            labels.extend_from_slice(&e.target_ids);
            labels.extend(std::iter::repeat_n(pad, t - n));
            decoder.push(start);
            decoder.extend_from_slice(&e.target_ids[..n - 1]);
            decoder.extend(std::iter::repeat_n(pad, t - n));
        }
        Ok(Batch {
            input_ids,
            attention_mask,
            labels: Tensor::from_vec(labels, (examples.len(), t), dev)?,
            decoder_input_ids: Some(Tensor::from_vec(decoder, (examples.len(), t), dev)?),
            task: task.to_string(),
        })
    }

    /// The label-smoothed summed loss; dropout (the backbone's `dropout_rate`) in training
    /// mode.
    fn loss(&self, batch: &Batch, mode: &mut ForwardMode) -> propetl_runtime::Result<Tensor> {
        let decoder = batch
            .decoder_input_ids
            .as_ref()
            .ok_or_else(|| PetlError::Config("a text-to-text batch needs decoder inputs".into()))?;
        let logits = self
            .inner
            .forward(
                &batch.input_ids,
                &batch.attention_mask,
                decoder,
                &batch.task,
                mode,
            )
            .map_err(crate::ModelError::into_petl)?;
        self.inner
            .loss(&logits, &batch.labels)
            .map_err(crate::ModelError::into_petl)
    }

    fn predict(&self, batch: &Batch) -> propetl_runtime::Result<Vec<Prediction>> {
        let kind = self.task(&batch.task)?.kind;
        Ok(self
            .answer(&batch.input_ids, &batch.attention_mask, &batch.task)?
            .into_iter()
            .map(|(_, hit)| match kind {
                TaskKind::Regression => Prediction::Score {
                    score: hit.map_or(-1.0, |l| l.value),
                },
                TaskKind::Classification { num_labels } => {
                    let label = hit.map_or(usize::MAX, |l| l.value as usize);
                    let mut probs = vec![0.0; num_labels];
                    if let Some(p) = probs.get_mut(label) {
                        *p = 1.0;
                    }
                    Prediction::Class { label, probs }
                }
            })
            .collect())
    }

    fn head_trainables(&self) -> Vec<Trainable> {
        Vec::new()
    }

    fn backbone_params(&self) -> usize {
        self.inner.config().backbone_params()
    }
}

/// Targets of a classification task: the class indices as text ("0", "1", …).
pub fn class_targets(
    num_labels: usize,
    encode: &dyn Fn(&str) -> crate::Result<Vec<u32>>,
) -> crate::Result<Vec<LabelTarget>> {
    (0..num_labels)
        .map(|i| {
            let text = i.to_string();
            Ok(LabelTarget {
                ids: encode(&text)?,
                text,
                value: i as f32,
            })
        })
        .collect()
}

/// Targets of STS-B-style regression: every score from `min` to `max` in steps of 0.1, as
/// text with one decimal.
pub fn score_targets(
    min: f32,
    max: f32,
    encode: &dyn Fn(&str) -> crate::Result<Vec<u32>>,
) -> crate::Result<Vec<LabelTarget>> {
    let steps = ((max - min) * 10.0).round() as i64;
    (0..=steps)
        .map(|i| {
            let value = ((min * 10.0).round() + i as f32) / 10.0;
            let text = format!("{value:.1}");
            Ok(LabelTarget {
                ids: encode(&text)?,
                text,
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_label_strings() {
        let enc = |t: &str| Ok(t.bytes().map(|b| b as u32).chain([1]).collect());
        let c = class_targets(3, &enc).unwrap();
        assert_eq!(c[2].text, "2");
        assert_eq!(c[2].ids, vec![b'2' as u32, 1]);
        let s = score_targets(0.0, 5.0, &enc).unwrap();
        assert_eq!(s.len(), 51);
        assert_eq!(s[34].text, "3.4");
        assert!((s[34].value - 3.4).abs() < 1e-6);
    }
}
