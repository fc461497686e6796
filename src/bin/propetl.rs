//! `propetl`: the command-line interface.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use propetl::demo;
use propetl_models::roberta::{RobertaConfig, Variant};
use propetl_runtime::{NumericOverrides, Plan, StorageReport};

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
    },
    /// Check parity with fixture folders from the PyTorch reference (exit 1 on a mismatch).
    Parity {
        /// Fixture folders (each with settings.json, ckpt/, *.safetensors).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the storage report of a variant on a model shape (method page §6).
    Storage {
        /// pro_adapter, pro_lora, pro_prefix, adapter, lora or prefix.
        #[arg(long, default_value = "pro_adapter")]
        variant: String,
        /// A Hugging Face model folder (its config.json); default: roberta-base shape.
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Override the keep ratio.
        #[arg(long)]
        keep: Option<f64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    propetl_runtime::alloc::tune_for_training();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
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
        } => {
            println!("ProPETL demo: tiny RoBERTa (2 layers, hidden 64) built in-process, synthetic majority task\n");
            let pro = demo::run_variant(Variant::ProAdapter, epochs, seed, lr, mask_lr, false)?;
            let base = demo::run_variant(Variant::Adapter, epochs, seed, lr, mask_lr, false)?;
            for run in [&pro, &base] {
                let first = run.epochs.first().map(|e| e.train_loss).unwrap_or(f64::NAN);
                let last = run.epochs.last().map(|e| e.train_loss).unwrap_or(f64::NAN);
                println!(
                    "\n{}: train loss {first:.4} -> {last:.4}, test accuracy {:.3}",
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
        Command::Parity { dirs, json } => {
            let mut all_ok = true;
            for dir in dirs {
                let report = propetl::parity::check_fixture(&dir)
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
        Command::Storage {
            variant,
            model_dir,
            keep,
            json,
        } => {
            let v = Variant::parse(&variant)?;
            let config = match model_dir {
                Some(d) => RobertaConfig::from_file(&d.join("config.json"))?,
                None => RobertaConfig::roberta_base(),
            };
            let overrides = NumericOverrides {
                keep,
                ..Default::default()
            };
            let cfg = overrides.apply(&v.spec())?;
            let plan = Plan::new(&cfg, &config.layout())?;
            let report = StorageReport::from_plan(&plan, config.backbone_params(), 0)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.to_table());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
