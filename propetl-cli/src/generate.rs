//! `propetl generate`: text generation with a T5 checkpoint, one input per line in, one JSON
//! object per line out (`{"input": …, "output": …, "ids": […]}`, in input order).

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use propetl::text_to_text::LoadedRun;
use propetl_models::t5::{until_eos, GenerationConfig, T5Checkpoint, T5Plain, T5Tokenizer};
use propetl_runtime::DeviceSpec;

/// Flags of `propetl generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// T5 checkpoint folder (config.json, model.safetensors, tokenizer.json) or a Hugging Face
    /// Hub id (`google-t5/t5-base`) resolved through the Hugging Face cache. With --run: the
    /// run's own backbone unless given.
    #[arg(long, visible_alias = "model", required_unless_present = "run")]
    model_dir: Option<PathBuf>,
    /// A T5 run directory (`propetl train` on a T5 model): generate with its best PETL state.
    #[arg(long)]
    run: Option<PathBuf>,
    /// The task whose masks to use (with --run; needed when the run has several tasks).
    /// Switching the task swaps masks only.
    #[arg(long, requires = "run")]
    task: Option<String>,
    /// Generated tokens at most per input.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// 1: greedy search; more: beam search.
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    /// Beam search: score = sum logprobs / length^length_penalty.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// Read the inputs from this file instead of standard input (one per line).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Inputs generated together.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Input tokens at most (longer inputs are truncated, keeping their final EOS).
    #[arg(long, default_value_t = 512)]
    max_input_tokens: usize,
    /// Device: cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// Run `propetl generate`.
pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(args.num_beams > 0, "--num-beams must be at least 1");
    // a run: its backbone, tokenizer and best PETL state, the task's masks
    let loaded = match &args.run {
        Some(dir) => Some(load_run(dir, args)?),
        None => None,
    };
    let lines: Vec<String> = match &args.input {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => std::io::stdin()
            .lock()
            .lines()
            .collect::<std::io::Result<_>>()
            .context("reading standard input")?,
    };
    let device = args.device.open()?;
    let plain;
    let (tokenizer, generator, eos) = match &loaded {
        Some((run, task)) => (
            &run.tokenizer,
            run.model.inner().generator(task)?,
            run.model.inner().config().eos_token_id,
        ),
        None => {
            let model_dir = propetl::hub::resolve_model(
                args.model_dir
                    .as_ref()
                    .context("--model-dir is needed without --run")?,
            )?;
            let ckpt = T5Checkpoint::open(&model_dir, &device)?;
            let tok_path = model_dir.join("tokenizer.json");
            anyhow::ensure!(
                tok_path.exists(),
                "{} is missing: generate needs the checkpoint's tokenizer",
                tok_path.display()
            );
            let tokenizer = T5Tokenizer::from_file(&tok_path, &ckpt.config)?;
            plain = (tokenizer, T5Plain::from_checkpoint(&ckpt)?);
            (&plain.0, plain.1.generator(), plain.1.config().eos_token_id)
        }
    };
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        num_beams: args.num_beams,
        length_penalty: args.length_penalty,
        ..Default::default()
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (start, mut generated) = (Instant::now(), 0usize);
    for chunk in lines.chunks(args.batch_size) {
        let rows = chunk
            .iter()
            .map(|l| tokenizer.encode(l, args.max_input_tokens))
            .collect::<propetl_models::Result<Vec<_>>>()?;
        let (ids, mask) = tokenizer.batch(&rows, &device)?;
        let outputs = generator.generate(&ids, &mask, &cfg)?;
        for (line, row) in chunk.iter().zip(&outputs) {
            let ids = until_eos(row, eos);
            generated += ids.len();
            let record = serde_json::json!({
                "input": line,
                "output": tokenizer.decode(ids)?,
                "ids": ids,
            });
            writeln!(out, "{record}")?;
        }
        out.flush()?;
    }
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        "generated {generated} tokens for {} inputs in {secs:.2}s ({:.0} tokens/s)",
        lines.len(),
        generated as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// A T5 run and the task to generate for: `--task`, or the run's only task.
fn load_run(dir: &std::path::Path, args: &GenerateArgs) -> Result<(LoadedRun, String)> {
    let run = propetl::text_to_text::load_run(dir, Some(args.device))?;
    if let Some(model_dir) = &args.model_dir {
        let ours = propetl::hub::resolve_model(model_dir)?;
        let theirs = run.config.resolved_model_dir()?;
        anyhow::ensure!(
            theirs.as_deref() == Some(ours.as_path()),
            "--model-dir {} is not the backbone of run {} ({}); leave it out to use the run's",
            ours.display(),
            dir.display(),
            theirs.map_or("none".into(), |p| p.display().to_string())
        );
    }
    let tasks: Vec<String> = run
        .config
        .run_tasks()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    let task = match (&args.task, tasks.as_slice()) {
        (Some(t), _) if tasks.contains(t) => t.clone(),
        (Some(t), _) => bail!(
            "run {} has no task `{t}` (its tasks: {})",
            dir.display(),
            tasks.join(", ")
        ),
        (None, [only]) => only.clone(),
        (None, _) => bail!(
            "run {} has several tasks ({}): pick one with --task",
            dir.display(),
            tasks.join(", ")
        ),
    };
    Ok((run, task))
}
