//! `propetl import-peft DIR --model-dir BASE --out RUN_DIR [--task NAME]`: a PEFT LoRA adapter
//! folder as an unshared `lora` run directory (the work is `propetl::import`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use propetl::import::{import_peft, Family, ImportOptions};
use propetl::Task;

/// Arguments of `propetl import-peft`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The PEFT adapter folder (adapter_config.json + adapter_model.safetensors, peft_type
    /// LORA).
    dir: PathBuf,
    /// The base checkpoint the adapter was trained on: a model folder or a Hugging Face Hub
    /// id (RoBERTa family with a SEQ_CLS adapter, or T5).
    #[arg(long, visible_alias = "model")]
    model_dir: PathBuf,
    /// The run directory to write (built beside it and renamed into place at the end).
    #[arg(long)]
    out: PathBuf,
    /// The run's task (a GLUE task such as sst2; default `custom`): label names, metrics and
    /// what `propetl eval` evaluates with --data-dir.
    #[arg(long)]
    task: Option<Task>,
    /// The run's data folder (for `propetl eval`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Replace a non-empty --out folder.
    #[arg(long)]
    overwrite: bool,
}

/// Run `propetl import-peft`: one line on stdout saying what was written.
pub fn run(args: &ImportArgs) -> Result<ExitCode> {
    let options = ImportOptions {
        task: args.task,
        data_dir: args.data_dir.clone(),
        overwrite: args.overwrite,
    };
    let s = import_peft(&args.dir, &args.model_dir, &args.out, &options)?;
    let family = match s.family {
        Family::Roberta => "RoBERTa",
        Family::T5 => "T5",
    };
    println!(
        "{family} `lora` run (task {}): {} tensors -> {} layers × [{}], r {}, alpha {} -> {}",
        s.task,
        s.tensors,
        s.layers.len(),
        s.targets.join(", "),
        s.r,
        s.alpha,
        s.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ImportArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<ImportArgs, String> {
        Cli::try_parse_from(std::iter::once("import-peft").chain(args.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn arguments_are_parsed_and_checked() {
        let a = parse(&["peft", "--model-dir", "m", "--out", "o", "--task", "sst2"]).unwrap();
        assert_eq!(a.task, Some("sst2".parse().unwrap()));
        assert!(!a.overwrite);
        let a = parse(&["peft", "--model", "m", "--out", "o", "--overwrite"]).unwrap();
        assert!(a.overwrite && a.task.is_none());
        let e = parse(&["peft", "--out", "o"]).unwrap_err();
        assert!(e.contains("--model-dir"), "{e}");
        let e = parse(&["peft", "--model-dir", "m", "--out", "o", "--task", "nope"]).unwrap_err();
        assert!(e.contains("unknown task `nope`"), "{e}");
    }

    #[test]
    fn a_missing_folder_is_an_error_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let a = parse(&["nope", "--model-dir", "m", "--out", out.to_str().unwrap()]).unwrap();
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        assert!(!out.exists());
    }
}
