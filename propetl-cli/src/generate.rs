//! `propetl generate`: text generation with a T5 checkpoint, one input per line in, one JSON
//! object per line out (`{"input": …, "output": …, "ids": […]}`, in input order).

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use propetl_models::t5::{until_eos, GenerationConfig, T5Checkpoint, T5Plain, T5Tokenizer};
use propetl_runtime::DeviceSpec;

/// Flags of `propetl generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// T5 checkpoint folder (config.json, model.safetensors, tokenizer.json) or a Hugging Face
    /// Hub id (`google-t5/t5-base`) resolved through the Hugging Face cache.
    #[arg(long, visible_alias = "model")]
    model_dir: PathBuf,
    /// A T5 run directory whose PETL state to use (not supported yet).
    #[arg(long)]
    run: Option<PathBuf>,
    /// The task whose mask to use (with --run).
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
    if let Some(run) = &args.run {
        bail!(
            "T5 runs are not supported yet ({}): generate with the plain checkpoint of --model-dir",
            run.display()
        );
    }
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(args.num_beams > 0, "--num-beams must be at least 1");
    let model_dir = propetl::hub::resolve_model(&args.model_dir)?;
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
    let ckpt = T5Checkpoint::open(&model_dir, &device)?;
    let tok_path = model_dir.join("tokenizer.json");
    anyhow::ensure!(
        tok_path.exists(),
        "{} is missing: generate needs the checkpoint's tokenizer",
        tok_path.display()
    );
    let tokenizer = T5Tokenizer::from_file(&tok_path, &ckpt.config)?;
    let model = T5Plain::from_checkpoint(&ckpt)?;
    let eos = model.config().eos_token_id;
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        num_beams: args.num_beams,
        length_penalty: args.length_penalty,
        ..Default::default()
    };
    let generator = model.generator();
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
