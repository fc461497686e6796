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

    /// A PEFT LoRA folder for the tiny T5 fixture (q/v of every attention module).
    fn tiny_t5_peft(dir: &std::path::Path) {
        use propetl::import::{peft_key, Factor, LoraPlacement};
        use propetl_runtime::{LoraTarget, PetlRng};
        let mut rng = PetlRng::seed(3);
        let mut tensors = std::collections::HashMap::new();
        let layers = (0..2)
            .map(|l| format!("enc.{l}"))
            .chain((0..2).map(|l| format!("dec.{l}")))
            .chain((0..2).map(|l| format!("cross.{l}")));
        for layer in layers {
            for target in [LoraTarget::Q, LoraTarget::V] {
                for (factor, shape) in [(Factor::A, [4, 64]), (Factor::B, [64, 4])] {
                    let p = LoraPlacement {
                        layer: layer.clone(),
                        target,
                        factor,
                    };
                    let t = rng
                        .normal(&shape[..], 0.1, &candle_core::Device::Cpu)
                        .unwrap();
                    tensors.insert(peft_key(Family::T5, &p), t);
                }
            }
        }
        std::fs::create_dir_all(dir).unwrap();
        candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
        let config = serde_json::json!({
            "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": 4, "lora_alpha": 8,
            "target_modules": ["q", "v"], "fan_in_fan_out": false, "bias": "none",
        });
        std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    }

    #[test]
    fn imports_a_t5_adapter_that_predict_loads() {
        let dir = tempfile::tempdir().unwrap();
        let peft = dir.path().join("peft");
        tiny_t5_peft(&peft);
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-t5");
        let out = dir.path().join("run");
        let o = out.to_str().unwrap();
        let p = peft.to_str().unwrap();
        let a = parse(&[p, "--model-dir", model, "--out", o, "--task", "sst2"]).unwrap();
        run(&a).unwrap();
        for f in [
            "config.toml",
            "task.json",
            "answers.json",
            "best.safetensors",
        ] {
            assert!(out.join(f).exists(), "{f}");
        }
        let predictor = propetl::predict::Predictor::load(&out, None).unwrap();
        assert!(predictor.is_text_to_text());
        assert_eq!(predictor.tasks(), ["sst2"]);
        // a second import into the same folder needs --overwrite
        let e = run(&a).unwrap_err().to_string();
        assert!(e.contains("--overwrite"), "{e}");
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
