//! Text generation for T5: greedy search and beam search with a key/value cache, batched,
//! following Hugging Face transformers' `generate` (5.x; `do_sample=False`).
//!
//! - **Cache.** Cross-attention keys and values of every decoder block are computed once from
//!   the encoder output; self-attention keys and values grow by one position per step. Each
//!   step feeds only the newest token. [`GenerationConfig::use_cache`]` = false` recomputes the
//!   whole decoder over all tokens so far every step instead (the reference the cache is tested
//!   against).
//! - **Greedy** ([`Generator::greedy`]): the arg-max token (the first on ties) per row and step;
//!   a row that emitted `eos_token_id` is finished and emits `pad_token_id` from then on; the
//!   loop stops when every row is finished or after `max_new_tokens` steps.
//! - **Beam search** ([`Generator::beam_search`]): transformers' vectorized beam search: per
//!   input the top `2·num_beams` continuations of all beams by accumulated log-probability
//!   (`log_softmax` of the logits, f32); those ending in EOS (or reaching `max_new_tokens`)
//!   among the first `num_beams` become finished hypotheses scored `sum logprobs /
//!   generated_len^length_penalty` (the EOS counts in the length); the best `num_beams` of the
//!   others continue. [`EarlyStopping`] is transformers' `early_stopping` (`False` by default:
//!   stop an input when all `num_beams` hypotheses are finished and the best running beam,
//!   scored at the current length, cannot beat the worst of them). The result of an input is its
//!   best finished hypothesis.
//! - **Output.** One row per input, without the decoder start token: the generated ids, all
//!   rows of the batch the same length, positions after a row's end filled with
//!   `pad_token_id` (greedy: exactly transformers' `generate(...)[:, 1:]`; beam search:
//!   transformers 5 fills with `eos_token_id` instead when `pad_token_id` is 0, so compare rows
//!   up to their first EOS, see [`until_eos`]).
//!
//! With PETL, the task's context (masks binarized once) is built once per [`Generator`]; the
//! plain backbone uses [`PetlContext::identity`].
//!
//! ```no_run
//! use candle_core::Device;
//! use propetl_models::t5::{GenerationConfig, T5Checkpoint, T5Plain, T5Tokenizer};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ckpt = T5Checkpoint::open("t5-small", &Device::Cpu)?;
//! let tok = T5Tokenizer::from_file("t5-small/tokenizer.json".as_ref(), &ckpt.config)?;
//! let rows = vec![tok.encode("translate English to German: Hello.", 512)?, tok.encode("hi", 512)?];
//! let (ids, mask) = tok.batch(&rows, &Device::Cpu)?;
//! let model = T5Plain::from_checkpoint(&ckpt)?;
//! for row in model.generate(&ids, &mask, &GenerationConfig::beams(4, 40))? {
//!     println!("{}", tok.decode(&row)?);
//! }
//! // a PETL variant (`Seq2Seq`): `variant.generate(&ids, &mask, "sst2", &GenerationConfig::greedy(10))?`
//! # Ok(()) }
//! ```

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use propetl_runtime::{ops, PetlContext};
use tokenizers::Tokenizer;

use super::config::T5Config;
use super::layers::{
    cross_site, decode, embed, encode, lm_head, relative_position_bucket, LayerCache,
};
use super::layers::{Stacks, T5Block};
use crate::error::{ModelError, Result};

/// transformers' `early_stopping` of beam search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// `False` (the default): an input is done when all `num_beams` hypotheses are finished and
    /// the best running beam, scored at the current length, is no better than the worst of them.
    #[default]
    Heuristic,
    /// `True`: an input is done as soon as `num_beams` hypotheses are finished.
    Always,
    /// `"never"`: like `Heuristic`, but a positive length penalty scores the best running beam
    /// at the maximum length (the canonical beam search).
    Never,
}

/// How to generate (transformers' `GenerationConfig` subset).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Generated tokens at most (the decoder start token not counted). Default 20.
    pub max_new_tokens: usize,
    /// 1: greedy search; more: beam search with this many beams. Default 1.
    pub num_beams: usize,
    /// Beam search: hypotheses are scored `sum logprobs / len^length_penalty`. Default 1.0.
    pub length_penalty: f64,
    /// Beam search: when an input is done.
    pub early_stopping: EarlyStopping,
    /// End of sequence (default: the config's `eos_token_id`).
    pub eos_token_id: Option<u32>,
    /// Filler after a row's end (default: the config's `pad_token_id`).
    pub pad_token_id: Option<u32>,
    /// First decoder input (default: the config's `decoder_start_token_id`, else its
    /// `pad_token_id`).
    pub decoder_start_token_id: Option<u32>,
    /// Key/value cache (default); `false` recomputes the decoder over all tokens every step.
    pub use_cache: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            eos_token_id: None,
            pad_token_id: None,
            decoder_start_token_id: None,
            use_cache: true,
        }
    }
}

impl GenerationConfig {
    /// Greedy search of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Default::default()
        }
    }

    /// Beam search with `num_beams` beams, at most `max_new_tokens` tokens.
    pub fn beams(num_beams: usize, max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            num_beams,
            ..Default::default()
        }
    }
}

/// The special ids of one generation call, checked against the vocabulary.
#[derive(Debug, Clone, Copy)]
struct Special {
    eos: u32,
    pad: u32,
    start: u32,
}

impl Special {
    fn resolve(cfg: &GenerationConfig, c: &T5Config) -> Result<Self> {
        let s = Self {
            eos: cfg.eos_token_id.unwrap_or(c.eos_token_id),
            pad: cfg.pad_token_id.unwrap_or(c.pad_token_id),
            start: cfg
                .decoder_start_token_id
                .unwrap_or_else(|| c.decoder_start()),
        };
        for (name, id) in [
            ("eos_token_id", s.eos),
            ("pad_token_id", s.pad),
            ("decoder_start_token_id", s.start),
        ] {
            if id as usize >= c.vocab_size {
                return Err(ModelError::Input(format!(
                    "{name} {id} is outside the vocabulary of {}",
                    c.vocab_size
                )));
            }
        }
        Ok(s)
    }
}

/// The part of `row` up to and including its first `eos` (all of it when there is none): a
/// generated row without the filler after its end.
pub fn until_eos(row: &[u32], eos: u32) -> &[u32] {
    match row.iter().position(|&t| t == eos) {
        Some(i) => &row[..=i],
        None => row,
    }
}

/// Generation with one PETL context (a task's, or the identity of the plain backbone): made
/// by [`Seq2Seq::generator`](super::Seq2Seq::generator) or
/// [`T5Plain::generator`](super::T5Plain::generator).
pub struct Generator<'a> {
    stacks: &'a Stacks,
    blocks: &'a [T5Block],
    petl: PetlContext,
}

impl std::fmt::Debug for Generator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("config", &self.stacks.config)
            .finish_non_exhaustive()
    }
}

/// The decoder of one generation call: the key/value caches, or (without cache) the encoder
/// output to recompute the whole decoder from.
enum Decoder<'g> {
    Cached {
        gen: &'g Generator<'g>,
        layers: Vec<LayerCache>,
        enc_bias: Tensor,
        /// Positions fed so far.
        t: usize,
    },
    Full {
        gen: &'g Generator<'g>,
        enc_out: Tensor,
        enc_bias: Tensor,
    },
}

impl<'g> Decoder<'g> {
    fn new(gen: &'g Generator<'g>, enc_out: Tensor, enc_bias: Tensor, cache: bool) -> Result<Self> {
        if !cache {
            return Ok(Self::Full {
                gen,
                enc_out,
                enc_bias,
            });
        }
        let config = &gen.stacks.config;
        let layers = gen
            .decoder_blocks()
            .iter()
            .enumerate()
            .map(|(l, b)| {
                Ok(LayerCache {
                    self_kv: None,
                    cross_kv: b.cross_keys_values(&enc_out, cross_site(config, &gen.petl, l))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::Cached {
            gen,
            layers,
            enc_bias,
            t: 0,
        })
    }

    /// Next-token logits `[N, V]` (f32) of the rows `seqs` (every row: the decoder start token
    /// and the tokens so far). `parents[r]`: the row of the previous step that row `r`
    /// continues (beam search; `None`: the same row).
    fn next_logits(&mut self, seqs: &[Vec<u32>], parents: Option<&[usize]>) -> Result<Tensor> {
        match self {
            Self::Full {
                gen,
                enc_out,
                enc_bias,
            } => {
                let t = seqs[0].len();
                let flat: Vec<u32> = seqs.iter().flatten().copied().collect();
                let ids = Tensor::from_vec(flat, (seqs.len(), t), enc_out.device())?;
                let logits = decode(gen.stacks, gen.blocks, &gen.petl, enc_out, enc_bias, &ids)?;
                Ok(logits
                    .narrow(1, t - 1, 1)?
                    .squeeze(1)?
                    .to_dtype(DType::F32)?)
            }
            Self::Cached {
                gen,
                layers,
                enc_bias,
                t,
            } => {
                let dev = enc_bias.device().clone();
                if let Some(parents) = parents {
                    let rows: Vec<u32> = parents.iter().map(|&p| p as u32).collect();
                    let rows = Tensor::from_vec(rows, parents.len(), &dev)?;
                    for layer in layers.iter_mut() {
                        layer.select_rows(&rows)?;
                    }
                }
                let last: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
                let ids = Tensor::from_vec(last, (seqs.len(), 1), &dev)?;
                let bias = gen.step_bias(*t, &dev)?;
                let st = gen.stacks;
                let mut h = embed(&st.shared, &ids)?;
                let first = st.config.num_layers;
                for (l, (block, cache)) in gen
                    .decoder_blocks()
                    .iter()
                    .zip(layers.iter_mut())
                    .enumerate()
                {
                    // detached: a PETL module's output would otherwise keep every step's graph
                    // alive through the cache
                    let cross = cross_site(&st.config, &gen.petl, l);
                    h = block
                        .decode_step(&h, &bias, cache, enc_bias, gen.petl.layer(first + l), cross)?
                        .detach();
                }
                *t += 1;
                Ok(lm_head(st, &h)?.squeeze(1)?.to_dtype(DType::F32)?)
            }
        }
    }
}

/// Per input of beam search: running beams and finished hypotheses (transformers' tensors of
/// one batch row).
struct BeamRow {
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<Vec<u32>>,
    finished_scores: Vec<f32>,
    is_finished: Vec<bool>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`.
    improvable: bool,
}

/// One continuation: accumulated score, the beam it extends, the token.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

/// The `keep` best continuations of `beams` (log-probabilities `[K][V]`) with running scores
/// `scores`, best first; equal scores in order of `beam·V + token` (like a stable sort).
fn top_continuations(log_probs: &[Vec<f32>], scores: &[f32], keep: usize) -> Vec<Candidate> {
    let mut top: Vec<Candidate> = Vec::with_capacity(keep + 1);
    for (beam, (row, &s)) in log_probs.iter().zip(scores).enumerate() {
        for (token, &lp) in row.iter().enumerate() {
            let mut score = lp + s;
            if score.is_nan() {
                score = f32::NEG_INFINITY;
            }
            if top.len() == keep && score <= top[keep - 1].score {
                continue;
            }
            let at = top.partition_point(|c| c.score >= score);
            top.insert(
                at,
                Candidate {
                    score,
                    beam,
                    token: token as u32,
                },
            );
            top.truncate(keep);
        }
    }
    top
}

/// Indices of the `k` largest of `xs`, largest first, ties by index.
fn top_indices(xs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    idx.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

fn arg_max(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] || (row[best].is_nan() && !x.is_nan()) {
            best = i;
        }
    }
    best as u32
}

impl<'a> Generator<'a> {
    pub(crate) fn new(stacks: &'a Stacks, blocks: &'a [T5Block], petl: PetlContext) -> Self {
        Self {
            stacks,
            blocks,
            petl,
        }
    }

    /// The backbone config.
    pub fn config(&self) -> &T5Config {
        &self.stacks.config
    }

    fn decoder_blocks(&self) -> &'a [T5Block] {
        &self.blocks[self.stacks.config.num_layers..]
    }

    /// The relative-position bias `[1, H, 1, t+1]` of decoder position `t` attending to
    /// positions `0..=t`.
    fn step_bias(&self, t: usize, dev: &Device) -> Result<Tensor> {
        let c = &self.stacks.config;
        let ids: Vec<u32> = (0..=t)
            .map(|j| {
                relative_position_bucket(
                    j as i64 - t as i64,
                    false,
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                ) as u32
            })
            .collect();
        let ids = Tensor::from_vec(ids, t + 1, dev)?;
        Ok(self
            .stacks
            .dec_bias_table
            .index_select(&ids, 0)?
            .t()?
            .reshape((1, c.num_heads, 1, t + 1))?)
    }

    /// Check the call and run the encoder: `None` for an empty batch.
    fn prepare(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cfg: &GenerationConfig,
    ) -> Result<Option<(Special, usize, Tensor, Tensor)>> {
        let special = Special::resolve(cfg, self.config())?;
        if cfg.num_beams == 0 {
            return Err(ModelError::Input("num_beams must be at least 1".into()));
        }
        if !cfg.length_penalty.is_finite() {
            return Err(ModelError::Input(format!(
                "length_penalty {} is not finite",
                cfg.length_penalty
            )));
        }
        let (b, _) = input_ids.dims2().map_err(|_| {
            ModelError::Input(format!(
                "input_ids must be [batch, length], not {:?}",
                input_ids.dims()
            ))
        })?;
        if b == 0 {
            return Ok(None);
        }
        let (enc_out, enc_bias) = encode(
            self.stacks,
            self.blocks,
            &self.petl,
            input_ids,
            attention_mask,
        )?;
        Ok(Some((special, b, enc_out.detach(), enc_bias)))
    }

    /// Greedy search when `cfg.num_beams` is 1, beam search otherwise (like transformers).
    /// `input_ids` and `attention_mask` are `[B, S]` (1 attend, 0 padding); one row of
    /// generated ids per input (see the [module docs](self)).
    pub fn generate(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        if cfg.num_beams == 1 {
            self.greedy(input_ids, attention_mask, cfg)
        } else {
            self.beam_search(input_ids, attention_mask, cfg)
        }
    }

    /// Greedy search (`cfg.num_beams` is ignored).
    pub fn greedy(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        let Some((sp, b, enc_out, enc_bias)) = self.prepare(input_ids, attention_mask, cfg)? else {
            return Ok(Vec::new());
        };
        let mut seqs = vec![vec![sp.start]; b];
        let mut open = vec![true; b];
        if cfg.max_new_tokens > 0 {
            let mut dec = Decoder::new(self, enc_out, enc_bias, cfg.use_cache)?;
            for _ in 0..cfg.max_new_tokens {
                let logits: Vec<Vec<f32>> = dec.next_logits(&seqs, None)?.to_vec2()?;
                for ((seq, open), row) in seqs.iter_mut().zip(open.iter_mut()).zip(&logits) {
                    let token = if *open { arg_max(row) } else { sp.pad };
                    seq.push(token);
                    *open &= token != sp.eos;
                }
                if !open.iter().any(|&o| o) {
                    break;
                }
            }
        }
        Ok(seqs.into_iter().map(|mut s| s.split_off(1)).collect())
    }

    /// Beam search with `cfg.num_beams` beams, also for one beam (then it gives greedy
    /// search's tokens; [`generate`](Self::generate) runs greedy search for one beam).
    pub fn beam_search(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        let Some((sp, b, enc_out, enc_bias)) = self.prepare(input_ids, attention_mask, cfg)? else {
            return Ok(Vec::new());
        };
        if cfg.max_new_tokens == 0 {
            return Ok(vec![Vec::new(); b]);
        }
        let k = cfg.num_beams;
        let vocab = self.config().vocab_size;
        // transformers keeps max(2, 1 + #eos) · num_beams continuations
        let keep = 2 * k;
        if keep > k * vocab {
            return Err(ModelError::Input(format!(
                "beam search keeps {keep} continuations but {k} beams over a vocabulary of {vocab} have only {}",
                k * vocab
            )));
        }
        let lp = cfg.length_penalty;
        let max_length = cfg.max_new_tokens + 1; // the decoder start token is the prompt
        let dev = enc_out.device().clone();
        // every input repeated num_beams times: row i·k + j is beam j of input i
        let rows: Vec<u32> = (0..b * k).map(|r| (r / k) as u32).collect();
        let rows = Tensor::from_vec(rows, b * k, &dev)?;
        let enc_out = enc_out.index_select(&rows, 0)?;
        let enc_bias = enc_bias.index_select(&rows, 0)?;
        let mut dec = Decoder::new(self, enc_out, enc_bias, cfg.use_cache)?;

        const NEG: f32 = -1.0e9;
        let mut beams: Vec<BeamRow> = (0..b)
            .map(|_| BeamRow {
                running: vec![vec![sp.start]; k],
                // only the first beam is live at the start
                running_scores: (0..k).map(|j| if j == 0 { 0.0 } else { NEG }).collect(),
                finished: vec![vec![sp.start]; k],
                finished_scores: vec![NEG; k],
                is_finished: vec![false; k],
                improvable: true,
            })
            .collect();
        let mut parents: Option<Vec<usize>> = None;
        let mut cur_len = 1usize;
        loop {
            let flat: Vec<Vec<u32>> = beams.iter().flat_map(|r| r.running.clone()).collect();
            let logits = dec.next_logits(&flat, parents.as_deref())?;
            let log_probs: Vec<Vec<f32>> = ops::log_softmax_last_dim(&logits)?.to_vec2()?;
            let mut next_parents = vec![0usize; b * k];
            let mut all_hit = true;
            // generated length with the new token: cur_len + 1 − the prompt (the start token)
            let len_norm = (cur_len as f64).powf(lp) as f32;
            for (i, row) in beams.iter_mut().enumerate() {
                let cands =
                    top_continuations(&log_probs[i * k..(i + 1) * k], &row.running_scores, keep);
                let hits: Vec<bool> = cands
                    .iter()
                    .map(|c| c.token == sp.eos || cur_len + 1 >= max_length)
                    .collect();
                all_hit &= hits.iter().all(|&h| h);
                let seq_of = |c: &Candidate, row: &BeamRow| {
                    let mut s = row.running[c.beam].clone();
                    s.push(c.token);
                    s
                };
                // running beams of the next step: the best that did not stop
                let run_scores: Vec<f32> = cands
                    .iter()
                    .zip(&hits)
                    .map(|(c, &h)| c.score + if h { NEG } else { -0.0 })
                    .collect();
                let next = top_indices(&run_scores, k);
                let next_running: Vec<Vec<u32>> =
                    next.iter().map(|&n| seq_of(&cands[n], row)).collect();
                let next_scores: Vec<f32> = next.iter().map(|&n| run_scores[n]).collect();
                for (j, &n) in next.iter().enumerate() {
                    next_parents[i * k + j] = i * k + cands[n].beam;
                }
                // finished hypotheses: merge those that just stopped among the first k
                let full = cfg.early_stopping == EarlyStopping::Always
                    && row.is_finished.iter().all(|&f| f);
                let just: Vec<bool> = hits.iter().enumerate().map(|(r, &h)| h && r < k).collect();
                let mut merged_scores = row.finished_scores.clone();
                for (c, &done) in cands.iter().zip(&just) {
                    let mut s = c.score / len_norm;
                    if full {
                        s += NEG;
                    }
                    if !row.improvable {
                        s += NEG;
                    }
                    if !done {
                        s += NEG;
                    }
                    merged_scores.push(s);
                }
                let best = top_indices(&merged_scores, k);
                let (mut fin, mut fin_flag) = (Vec::with_capacity(k), Vec::with_capacity(k));
                for &m in &best {
                    if m < k {
                        fin.push(row.finished[m].clone());
                        fin_flag.push(row.is_finished[m]);
                    } else {
                        fin.push(seq_of(&cands[m - k], row));
                        fin_flag.push(just[m - k]);
                    }
                }
                row.finished_scores = best.iter().map(|&m| merged_scores[m]).collect();
                row.finished = fin;
                row.is_finished = fin_flag;
                row.running = next_running;
                row.running_scores = next_scores;
            }
            cur_len += 1;
            for row in beams.iter_mut() {
                let best_len = if cfg.early_stopping == EarlyStopping::Never && lp > 0.0 {
                    max_length - 1
                } else {
                    cur_len - 1
                };
                let best_possible = row.running_scores[0] / (best_len as f64).powf(lp) as f32;
                let worst = row
                    .finished_scores
                    .iter()
                    .copied()
                    .fold(f32::INFINITY, f32::min);
                row.improvable &= row
                    .is_finished
                    .iter()
                    .any(|&f| best_possible > if f { worst } else { NEG });
            }
            let improvable = beams.iter().any(|r| r.improvable);
            let open = !(cfg.early_stopping == EarlyStopping::Always
                && beams.iter().all(|r| r.is_finished.iter().all(|&f| f)));
            if !(improvable && open && !all_hit) {
                break;
            }
            parents = Some(next_parents);
        }
        let mut out: Vec<Vec<u32>> = beams
            .into_iter()
            .map(|mut r| r.finished.swap_remove(0).split_off(1))
            .collect();
        let width = out.iter().map(Vec::len).max().unwrap_or(0);
        for row in &mut out {
            row.resize(width, sp.pad);
        }
        Ok(out)
    }
}

/// A T5 `tokenizer.json` for generation: encode texts (with the trailing `</s>`), batch them
/// with padding, decode generated ids.
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
    eos_id: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("pad_id", &self.pad_id)
            .field("eos_id", &self.eos_id)
            .finish_non_exhaustive()
    }
}

impl T5Tokenizer {
    /// Load `tokenizer.json` (padding and truncation baked into the file are turned off).
    pub fn from_file(path: &Path, config: &T5Config) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self {
            inner,
            pad_id: config.pad_token_id,
            eos_id: config.eos_token_id,
        })
    }

    /// Token ids of one text with special tokens, at most `max_len` (a longer one keeps its
    /// first `max_len − 1` ids and the final EOS).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>> {
        let mut ids = self
            .inner
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec();
        let max_len = max_len.max(1);
        if ids.len() > max_len {
            if ids.last() == Some(&self.eos_id) {
                ids.truncate(max_len - 1);
                ids.push(self.eos_id);
            } else {
                ids.truncate(max_len);
            }
        }
        Ok(ids)
    }

    /// `(input_ids, attention_mask)` `[B, S]` (u32) of id rows, padded on the right to the
    /// longest.
    pub fn batch(&self, rows: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
        if rows.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let longest = refs.iter().map(|r| r.len()).max().unwrap_or(0);
        Ok(propetl_runtime::task::pad_batch(
            &refs,
            longest,
            self.pad_id,
            device,
        )?)
    }

    /// The text of generated ids (up to the first EOS; special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(until_eos(ids, self.eos_id), true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_are_best_first_and_stable_on_ties() {
        let lp = vec![vec![-1.0, -0.5, -3.0], vec![-0.5, -2.0, -0.1]];
        let top = top_continuations(&lp, &[0.0, -0.5], 4);
        let got: Vec<(usize, u32)> = top.iter().map(|c| (c.beam, c.token)).collect();
        // scores: b0: -1, -0.5, -3; b1: -1, -2.5, -0.6
        assert_eq!(got, [(0, 1), (1, 2), (0, 0), (1, 0)]);
        assert_eq!(top_indices(&[1.0, 3.0, 3.0, 2.0], 3), [1, 2, 3]);
        assert_eq!(arg_max(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(until_eos(&[5, 1, 0, 0], 1), [5, 1]);
        assert_eq!(until_eos(&[5, 6], 1), [5, 6]);
    }
}
