//! `propetl export RUN_DIR --format peft|merged --out DIR`: a LoRA / ProLoRA run as a PEFT
//! adapter folder or as a merged Hugging Face checkpoint (the work is `propetl::export`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use propetl::export::{export, ExportFormat, ExportOptions};

/// Arguments of `propetl export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run directory (written by `train`; a `lora` or `pro_lora` run).
    run: PathBuf,
    /// `peft`: adapter_config.json + adapter_model.safetensors for PEFT on the base model;
    /// `merged`: a plain Hugging Face checkpoint with LoRA folded into the weights.
    #[arg(long)]
    format: ExportFormat,
    /// The folder to write (built beside it and renamed into place at the end).
    #[arg(long)]
    out: PathBuf,
    /// Replace a non-empty --out folder.
    #[arg(long)]
    overwrite: bool,
    /// PEFT's base_model_name_or_path (default: the run's model folder as an absolute path).
    #[arg(long)]
    base_model: Option<String>,
}

/// Run `propetl export`: one line on stdout saying what was written.
pub fn run(args: &ExportArgs) -> Result<ExitCode> {
    if args.base_model.is_some() && args.format != ExportFormat::Peft {
        anyhow::bail!("--base-model is only used by --format peft");
    }
    let options = ExportOptions {
        overwrite: args.overwrite,
        base_model: args.base_model.clone(),
    };
    let s = export(&args.run, args.format, &args.out, &options)?;
    let what = match s.format {
        ExportFormat::Peft => "PEFT LoRA adapter",
        ExportFormat::Merged => "merged Hugging Face checkpoint",
    };
    println!(
        "{what}: {} layers × [{}], r {}, alpha {} ({} tensors) -> {} ({})",
        s.layers,
        s.target_modules.join(", "),
        s.r,
        s.alpha,
        s.tensors,
        s.out.display(),
        s.files.join(", ")
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
        args: ExportArgs,
    }

    fn parse(args: &[&str]) -> std::result::Result<ExportArgs, String> {
        Cli::try_parse_from(std::iter::once("export").chain(args.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn formats_are_named_and_checked() {
        let a = parse(&["runs/x", "--format", "peft", "--out", "o"]).unwrap();
        assert_eq!(a.format, ExportFormat::Peft);
        let a = parse(&["runs/x", "--format", "merged", "--out", "o", "--overwrite"]).unwrap();
        assert!(a.format == ExportFormat::Merged && a.overwrite);
        let e = parse(&["runs/x", "--format", "onnx", "--out", "o"]).unwrap_err();
        assert!(
            e.contains("unknown export format `onnx` (peft, merged)"),
            "{e}"
        );
        let e = parse(&["runs/x", "--format", "peft"]).unwrap_err();
        assert!(e.contains("--out"), "{e}");
    }

    #[test]
    fn errors_come_back_as_errors_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let o = out.to_str().unwrap();
        let a = parse(&[
            "nope",
            "--format",
            "merged",
            "--out",
            o,
            "--base-model",
            "x/y",
        ])
        .unwrap();
        let e = run(&a).unwrap_err().to_string();
        assert!(
            e.contains("--base-model is only used by --format peft"),
            "{e}"
        );
        let a = parse(&["nope", "--format", "peft", "--out", o]).unwrap();
        let e = format!("{:#}", run(&a).unwrap_err());
        assert!(e.contains("does not exist"), "{e}");
        assert!(!out.exists());
    }
}
