//! `propetl`: the command-line interface (`cargo install --path propetl-cli`).

mod export;
mod generate;
mod import;
mod parity;
mod plot;
mod progress;
mod report;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use propetl::demo;
use propetl::run::{self, RunConfig, RunReport, Task};
use propetl_models::roberta::{self, RobertaConfig};
use propetl_runtime::{DeviceSpec, NumericOverrides, Plan, StorageReport, Variant};

use crate::progress::Progress;

#[derive(Parser)]
#[command(
    name = "propetl",
    version,
    about = "ProPETL: one prototype network, many binary masks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded default job: ProAdapter vs the unshared adapter on a tiny in-process model.
    Demo {
        /// Epochs per variant.
        #[arg(long, default_value_t = 10)]
        epochs: usize,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Learning rate of adapters and head.
        #[arg(long, default_value_t = 1e-2)]
        lr: f64,
        /// Learning rate of mask scores.
        #[arg(long, default_value_t = 3e-3)]
        mask_lr: f64,
        /// Device (cpu, cuda, cuda:N, metal).
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
    },
    /// Train a variant on a task (GLUE, sentiment or custom data) and write a run directory.
    Train(TrainArgs),
    /// Predict with the best state of a run: JSONL / CSV / TSV (named columns) or plain lines in,
    /// one JSON object per input out (id, label, probabilities or score; T5 runs: the generated
    /// text; multi-task runs: each row's task), in input order.
    Predict {
        /// The run directory (written by `train`).
        run: PathBuf,
        /// Input file, or `-` for standard input.
        #[arg(long, default_value = "-")]
        input: PathBuf,
        /// jsonl, csv, tsv or lines (default: from the file extension; lines for stdin).
        #[arg(long)]
        format: Option<String>,
        /// Column (JSONL key or CSV header) of the text.
        #[arg(long, default_value = "text")]
        text_column: String,
        /// Column of the second text (pair tasks).
        #[arg(long)]
        text_pair_column: Option<String>,
        /// Column of the id (default: the row number).
        #[arg(long)]
        id_column: Option<String>,
        /// Column of each row's task (multi-task runs; default: `task`, read when the run has
        /// several tasks).
        #[arg(long)]
        task_column: Option<String>,
        /// The task of every row (instead of a task column).
        #[arg(long)]
        task: Option<String>,
        /// Inputs per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Device (default: the run's).
        #[arg(long)]
        device: Option<DeviceSpec>,
    },
    /// Evaluate the best state of a run directory.
    Eval {
        /// The run directory (written by `train`).
        run: PathBuf,
        /// `test` or `eval`.
        #[arg(long, default_value = "test")]
        split: String,
    },
    /// The main job: fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes sentiment with ProAdapter
    /// and with the unshared adapter baseline; print test accuracy and storage of both.
    Quickstart {
        /// Folder with config.json, model.safetensors, tokenizer.json.
        #[arg(long, default_value = "assets/all-MiniLM-L6-v2")]
        model_dir: PathBuf,
        /// Folder with rotten_tomatoes_corpus_full.csv.
        #[arg(long, default_value = "assets/sentiment")]
        data_dir: PathBuf,
        /// Where the run directories go.
        #[arg(long, default_value = "runs/quickstart")]
        out: PathBuf,
        /// Variants to train, comma-separated.
        #[arg(long, default_value = "pro_adapter,adapter", value_delimiter = ',')]
        variants: Vec<Variant>,
        /// Training examples used (of ~10k).
        #[arg(long, default_value_t = 4000)]
        max_train_examples: usize,
        /// Epochs.
        #[arg(long, default_value_t = 2)]
        epochs: usize,
    },
    /// Draw a PNG of loss/metric curves and of score vs storage across run directories.
    Report {
        /// Run directories (written by `train`).
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The PNG to write.
        #[arg(long, default_value = "report.png")]
        out: PathBuf,
    },
    /// Check parity with fixture folders from the PyTorch reference (exit 1 on a mismatch).
    Parity {
        /// Fixture folders (each with settings.json, ckpt/, *.safetensors).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Device to run the checks on (cpu, cuda, cuda:N, metal).
        #[arg(long, default_value = "cpu")]
        device: DeviceSpec,
    },
    /// Generate text with a T5 checkpoint: one input per line (stdin or --input), one JSON
    /// object per line out.
    Generate(generate::GenerateArgs),
    /// Run a grid of runs (variants × override values × seeds) of one task into a sweep
    /// folder: skips complete cells, resumes half-done ones, writes summary.csv/.json and a
    /// metric-vs-storage plot.
    Sweep(sweep::SweepArgs),
    /// Export a LoRA / ProLoRA run: a PEFT adapter folder (`--format peft`) or a merged
    /// Hugging Face checkpoint with LoRA folded into the weights (`--format merged`).
    Export(export::ExportArgs),
    /// Import a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) as
    /// an unshared `lora` run directory for predict, eval and generate --run.
    ImportPeft(import::ImportArgs),
    /// Print the storage report of a variant on a model shape (method page §6).
    Storage {
        /// pro_adapter, pro_lora, pro_prefix, adapter, lora, prefix or full (full fine-tuning).
        #[arg(long, default_value = "pro_adapter")]
        variant: Variant,
        /// A Hugging Face model folder or Hub id (its config.json: BERT family or T5).
        #[arg(long, conflicts_with = "model")]
        model_dir: Option<PathBuf>,
        /// A built-in shape: roberta-base or t5-base (default: roberta-base).
        #[arg(long)]
        model: Option<String>,
        /// Tasks sharing the model (T5 multi-task ProPETL: one task mask each; default: the
        /// eight GLUE tasks).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Override the keep ratio.
        #[arg(long)]
        keep: Option<f64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The storage report of a variant on a model shape, and for T5 the marginal cost of one
/// more task.
fn storage(
    variant: Variant,
    model_dir: Option<PathBuf>,
    model: Option<String>,
    tasks: Vec<String>,
    keep: Option<f64>,
) -> Result<(StorageReport, Option<f64>)> {
    use propetl_models::t5::T5Config;
    /// The shape a storage report is computed on.
    enum Shape {
        Roberta(RobertaConfig),
        T5(T5Config),
    }
    let shape = match (&model_dir, model.as_deref()) {
        (Some(d), _) => {
            let p = propetl::hub::resolve_model(d)?.join("config.json");
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            let is_t5 = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .is_some_and(|v| v["model_type"] == "t5");
            if is_t5 {
                Shape::T5(T5Config::from_json(&text)?)
            } else {
                Shape::Roberta(RobertaConfig::from_json(&text)?)
            }
        }
        (None, None | Some("roberta-base")) => Shape::Roberta(RobertaConfig::roberta_base()),
        (None, Some("t5-base")) => Shape::T5(T5Config::t5_base()),
        (None, Some(other)) => anyhow::bail!("unknown --model `{other}` (roberta-base, t5-base)"),
    };
    let overrides = NumericOverrides {
        keep,
        ..Default::default()
    };
    let config = match shape {
        Shape::Roberta(c) => c,
        Shape::T5(config) => {
            let cfg = overrides.apply(&propetl_models::t5::spec(variant)?)?;
            let tasks: Vec<String> = if tasks.is_empty() {
                propetl::data::GlueTask::ALL
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect()
            } else {
                tasks
            };
            let names: Vec<&str> = tasks.iter().map(String::as_str).collect();
            let report = |names: &[&str]| -> Result<StorageReport> {
                let plan = Plan::new(&cfg, &config.layout(names))?;
                Ok(StorageReport::from_plan(
                    &plan,
                    config.backbone_params(),
                    0,
                )?)
            };
            let now = report(&names)?;
            let mut more = names.clone();
            more.push("one-more-task");
            let marginal = report(&more)?.float32_equivalents - now.float32_equivalents;
            return Ok((now, Some(marginal)));
        }
    };
    if !tasks.is_empty() {
        anyhow::bail!("--tasks applies to multi-task T5 models (--model t5-base)");
    }
    if variant.is_full() {
        if keep.is_some() {
            anyhow::bail!(
                "--keep does not apply to variant `full` (full fine-tuning has no masks)"
            );
        }
        return Ok((roberta::full::storage(&config)?, None));
    }
    let cfg = overrides.apply(&roberta::spec(variant)?)?;
    let plan = Plan::new(&cfg, &config.layout())?;
    Ok((
        StorageReport::from_plan(&plan, config.backbone_params(), 0)?,
        None,
    ))
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A TOML run configuration (see configs/); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint (every other flag comes
    /// from its config.toml).
    #[arg(long, conflicts_with_all = ["config", "task", "variant", "out", "overwrite", "model_dir", "data_dir", "epochs", "batch_size", "max_len", "lr", "mask_lr", "keep", "seed", "max_train_examples", "device"])]
    resume: Option<PathBuf>,
    /// Replace an existing run directory (the new run is built beside it and swapped in only
    /// when it has finished).
    #[arg(long)]
    overwrite: bool,
    /// Also checkpoint every this many optimizer steps (always: at the end of every epoch).
    #[arg(long)]
    checkpoint_every_steps: Option<usize>,
    /// Run directory to write.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Task: cola … rte, glue (multi-task; T5 models), rotten-tomatoes, vader-movies, custom.
    #[arg(long)]
    task: Option<Task>,
    /// Variant: pro_adapter, pro_lora, pro_prefix, adapter, lora, prefix, or full (full fine-tuning: every backbone weight trains; use a full-model lr such as 5e-5).
    #[arg(long)]
    variant: Option<Variant>,
    /// Device: cpu, cuda, cuda:N, metal (GPUs need a build with that cargo feature).
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Hugging Face model folder or Hub id (`FacebookAI/roberta-base`, from the Hugging Face
    /// cache; default: built-in tiny RoBERTa).
    #[arg(long, visible_alias = "model")]
    model_dir: Option<PathBuf>,
    /// Data folder (GLUE layout or the sentiment files).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Maximum sequence length.
    #[arg(long)]
    max_len: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Mask-score learning rate.
    #[arg(long)]
    mask_lr: Option<f64>,
    /// Keep ratio of the masks.
    #[arg(long)]
    keep: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Use at most this many training examples.
    #[arg(long)]
    max_train_examples: Option<usize>,
    /// Skip (and count) malformed data rows.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    fn resolve(&self) -> Result<RunConfig> {
        let mut c = match &self.config {
            Some(p) => RunConfig::from_toml_file(p)?,
            None => RunConfig::new(
                self.task.context("give --config or --task")?,
                Variant::ProAdapter,
            ),
        };
        macro_rules! set {
            ($($src:ident => $($dst:ident).+),* $(,)?) => { $(if let Some(v) = &self.$src { c.$($dst).+ = v.clone().into(); })* };
        }
        set!(task => task, variant => variant, device => device, epochs => train.epochs, batch_size => train.batch_size, max_len => train.max_len, lr => train.lr, mask_lr => train.mask_lr, seed => train.seed);
        if let Some(d) = &self.model_dir {
            c.model_dir = Some(d.clone());
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = Some(d.clone());
        }
        if let Some(k) = self.keep {
            c.petl.keep = Some(k);
        }
        if let Some(n) = self.max_train_examples {
            c.max_train_examples = Some(n);
        }
        c.skip_bad_rows |= self.skip_bad_rows;
        if self.quiet {
            c.train.progress = false;
        }
        if self.checkpoint_every_steps.is_some() {
            c.train.checkpoint_every_steps = self.checkpoint_every_steps;
        }
        Ok(c)
    }
}

fn print_report(r: &RunReport) {
    println!(
        "{} / {}: best epoch {} — eval {} — test {}",
        r.task,
        r.variant,
        r.best_epoch,
        r.eval.summary(),
        r.test.summary()
    );
    for (task, scores) in &r.tasks {
        println!(
            "  {task}: eval {} — test {}",
            scores.eval.summary(),
            scores.test.summary()
        );
    }
    match r.glue_average {
        Some(avg) => println!("  GLUE average (11 numbers, test): {avg:.2}"),
        None if r.tasks.len() == propetl::data::GlueTask::ALL.len() => println!(
            "  GLUE average (11 numbers, test): undefined (a task's metric is not a number, e.g. the correlation of constant predictions)"
        ),
        None => {}
    }
    println!("{}", r.storage.to_table());
    println!(
        "sizes: train {}, eval {}, test {}; skipped rows {}; wall time {:.1}s",
        r.sizes.train, r.sizes.eval, r.sizes.test, r.skipped_rows, r.wall_seconds
    );
}

fn main() -> ExitCode {
    // `propetl … | head` ends quietly, as Unix tools do, instead of panicking on a closed pipe
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    propetl_runtime::alloc::tune_for_training();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,propetl=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // every command on the compute pool: its parallel kernels then run without a cross-thread
    // hand-off per job (propetl_runtime::parallel)
    match propetl_runtime::parallel::on_compute_pool(|| run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Demo {
            epochs,
            seed,
            lr,
            mask_lr,
            device,
        } => {
            let cfg = demo::demo_config(epochs, seed, lr, mask_lr);
            cfg.validate()?;
            let device = device.open()?;
            println!("ProPETL demo: tiny RoBERTa (2 layers, hidden 64) built in-process, synthetic majority task\n");
            let mut runs = Vec::new();
            for variant in [Variant::ProAdapter, Variant::Adapter] {
                let mut progress = Progress::new(variant.name(), true);
                runs.push(demo::run_variant(variant, &cfg, &device, &mut progress)?);
            }
            let (pro, base) = (&runs[0], &runs[1]);
            for run in [pro, base] {
                let first = run.epochs.first().map(|e| e.train_loss).unwrap_or(f64::NAN);
                let last = run.epochs.last().map(|e| e.train_loss).unwrap_or(f64::NAN);
                println!(
                    "\n{}: train loss {first:.4} -> {last:.4}, test accuracy {:.1}",
                    run.variant, run.test_accuracy
                );
                println!("{}", run.storage.to_table());
            }
            println!(
                "\nProAdapter stores {:.1} float32-equivalents vs {:.1} for the unshared adapters ({:.1}%).",
                pro.storage.float32_equivalents,
                base.storage.float32_equivalents,
                100.0 * pro.storage.float32_equivalents / base.storage.float32_equivalents
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => {
            let (report, dir) = match &args.resume {
                Some(dir) => {
                    let mut progress = Progress::new("resume", !args.quiet);
                    (run::resume(dir, &mut progress)?, dir.clone())
                }
                None => {
                    let cfg = args.resolve()?;
                    let mut progress = Progress::new(cfg.variant.name(), cfg.train.progress);
                    let options = run::RunOptions {
                        overwrite: args.overwrite,
                        ..Default::default()
                    };
                    let report = run::run_with(&cfg, &args.out, options, &mut progress)?;
                    (report, args.out.clone())
                }
            };
            print_report(&report);
            println!("run directory: {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            run: dir,
            input,
            format,
            text_column,
            text_pair_column,
            id_column,
            task_column,
            task,
            batch_size,
            device,
        } => {
            use propetl::predict::{read_rows, row_tasks, run_task_names, Columns, InputFormat};
            use propetl::predict::{PredictInput, Predictor};
            use std::io::{Read, Write};
            if batch_size == 0 {
                anyhow::bail!("--batch-size must be at least 1");
            }
            let stdin = input.as_os_str() == "-";
            let format = match format.as_deref() {
                None if stdin => InputFormat::Lines,
                None => InputFormat::from_path(&input),
                Some("jsonl") => InputFormat::Jsonl,
                Some("csv") => InputFormat::Csv,
                Some("tsv") => InputFormat::Tsv,
                Some("lines") => InputFormat::Lines,
                Some(other) => anyhow::bail!("unknown --format `{other}` (jsonl, csv, tsv, lines)"),
            };
            let (text, source) = if stdin {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t)?;
                (t, "<stdin>".to_string())
            } else {
                (
                    std::fs::read_to_string(&input)
                        .with_context(|| format!("reading {}", input.display()))?,
                    input.display().to_string(),
                )
            };
            // every row's task is checked against the run's before the model is loaded
            let run_tasks = run_task_names(&dir)?;
            row_tasks(&[], &run_tasks, task.as_deref())?;
            let task_column = match (&task, task_column) {
                (Some(_), _) => None,
                (None, Some(c)) => Some(c),
                (None, None) if run_tasks.len() > 1 => Some("task".to_string()),
                (None, None) => None,
            };
            let columns = Columns {
                id: id_column,
                text: text_column,
                text_pair: text_pair_column,
                task: task_column,
            };
            let rows = read_rows(&text, format, &columns, &source)?;
            let tasks = row_tasks(&rows, &run_tasks, task.as_deref())?;
            let inputs: Vec<PredictInput> = rows.into_iter().map(|r| r.input).collect();
            let predictor = Predictor::load(&dir, device)?;
            let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::new(inputs.len() as u64)
            } else {
                indicatif::ProgressBar::hidden()
            };
            let outputs = predictor.predict_tasks(&inputs, &tasks, batch_size, &mut |n| {
                bar.set_position(n as u64)
            })?;
            bar.finish_and_clear();
            let mut stdout = std::io::stdout().lock();
            for o in outputs {
                writeln!(stdout, "{}", serde_json::to_string(&o)?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { run: dir, split } => {
            let scores = run::evaluate_run_tasks(&dir, &split)?;
            if scores.len() == 1 {
                let m = scores.into_values().next().expect("one task");
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                // a multi-task run: every task's metrics, and the 11-number GLUE average
                // when all eight tasks are there
                let by_glue = scores
                    .iter()
                    .filter_map(|(t, m)| Some((propetl::data::GlueTask::parse(t).ok()?, m.clone())))
                    .collect();
                let out = serde_json::json!({
                    "tasks": scores,
                    "glue_average": propetl::metrics::glue_average(&by_glue),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Quickstart {
            model_dir,
            data_dir,
            out,
            variants,
            max_train_examples,
            epochs,
        } => {
            for needed in [
                model_dir.join("model.safetensors"),
                data_dir.join("rotten_tomatoes_corpus_full.csv"),
            ] {
                anyhow::ensure!(
                    needed.exists(),
                    "{} is missing: run scripts/fetch-assets.sh",
                    needed.display()
                );
            }
            println!("Fine-tuning all-MiniLM-L6-v2 on Rotten Tomatoes sentiment (seeded 80/10/10 hash split; {max_train_examples} training sentences, {epochs} epochs)\n");
            let mut reports = Vec::new();
            for v in variants {
                let cfg = RunConfig {
                    model_dir: Some(model_dir.clone()),
                    data_dir: Some(data_dir.clone()),
                    max_train_examples: Some(max_train_examples),
                    train: propetl::train::TrainConfig {
                        epochs,
                        batch_size: 32,
                        max_len: 64,
                        lr: 1e-3,
                        mask_lr: 3e-3,
                        warmup_ratio: 0.1,
                        seed: 42,
                        ..Default::default()
                    },
                    ..RunConfig::new(Task::RottenTomatoes, v)
                };
                let mut progress = Progress::new(v.name(), true);
                // the main job replaces its own previous results
                let options = run::RunOptions {
                    overwrite: true,
                    ..Default::default()
                };
                let report = run::run_with(&cfg, &out.join(v.name()), options, &mut progress)?;
                print_report(&report);
                println!();
                reports.push(report);
            }
            println!(
                "{:<12} {:>14} {:>16} {:>14}",
                "variant", "test accuracy", "float32-equiv.", "% of backbone"
            );
            for r in &reports {
                println!(
                    "{:<12} {:>14.2} {:>16.0} {:>13.3}%",
                    r.variant.name(),
                    r.test.accuracy.unwrap_or(f64::NAN),
                    r.storage.float32_equivalents,
                    r.storage.percent_of_backbone
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { runs, out } => {
            let loaded = report::load_runs(&runs)?;
            print!("{}", report::table(&loaded));
            let svg = report::draw(&loaded, &out)?;
            println!("wrote {} and {}", out.display(), svg.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Parity { dirs, json, device } => {
            let dev = device.open()?;
            let mut all_ok = true;
            for dir in dirs {
                let report = parity::check_fixture(&dir, &dev)
                    .with_context(|| format!("parity check of {}", dir.display()))?;
                all_ok &= report.passed();
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print!("{}", report.to_text());
                }
            }
            Ok(if all_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Generate(args) => generate::run(&args),
        Command::Export(args) => export::run(&args),
        Command::ImportPeft(args) => import::run(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Storage {
            variant,
            model_dir,
            model,
            tasks,
            keep,
            json,
        } => {
            let (report, marginal) = storage(variant, model_dir, model, tasks, keep)?;
            if json {
                let mut v = serde_json::to_value(&report)?;
                if let Some(m) = marginal {
                    v["marginal_task_float32_equivalents"] = serde_json::json!(m);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", report.to_table());
                if let Some(m) = marginal {
                    println!("  one more task costs               {m:.0} float32-equivalents (its task masks)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
