//! What the paper-variant examples share: run the variant's paper configuration (see
//! `propetl::run::example_run`) and print its epochs, test metrics and storage.

use propetl::runtime::Variant;

/// `main` of a paper-variant example.
pub fn main_for(variant: Variant) -> anyhow::Result<()> {
    let (report, dir) = propetl::run::example_run(variant)?;
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
