//! The paper's pro_adapter variant on RoBERTa (method page §3–§4):
//! `cargo run --release --example pro_adapter_roberta -- [MODEL_DIR GLUE_DIR [TASK]]`.
//! Without arguments: the built-in tiny RoBERTa on small synthetic GLUE data.

use propetl::runtime::Variant;

fn main() -> anyhow::Result<()> {
    let (report, dir) = propetl::run::example_run(Variant::ProAdapter)?;
    for e in &report.epochs {
        println!(
            "epoch {:>2}  train loss {:.4}  eval {:.2}",
            e.epoch,
            e.train_loss,
            e.eval_metric()
        );
    }
    println!(
        "best epoch {}; test {}",
        report.best_epoch,
        report.test.summary()
    );
    println!("{}", report.storage.to_table());
    println!("run directory: {}", dir.display());
    Ok(())
}
