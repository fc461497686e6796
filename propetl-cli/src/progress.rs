//! Training progress for people: an indicatif bar on a terminal, periodic `tracing` lines
//! (at most one every 10 s, plus every epoch) when stderr is not a terminal (CI logs, nohup).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use propetl::train::{EpochLog, TrainObserver};
use propetl_runtime::TaskModel;

/// The CLI's [`TrainObserver`].
pub struct Progress {
    label: String,
    enabled: bool,
    bar: Option<ProgressBar>,
    epochs: usize,
    total: usize,
    last_line: Instant,
}

impl Progress {
    /// Progress of a run called `label` (the variant); `enabled = false` shows nothing.
    pub fn new(label: &str, enabled: bool) -> Self {
        Self {
            label: label.to_string(),
            enabled,
            bar: None,
            epochs: 0,
            total: 0,
            last_line: Instant::now(),
        }
    }
}

impl TrainObserver for Progress {
    fn on_start(&mut self, total_steps: usize, epochs: usize) {
        self.epochs = epochs;
        self.total = total_steps;
        self.last_line = Instant::now();
        if self.enabled && std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} epoch {msg} [{bar:30}] {pos}/{len} {elapsed}<{eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_prefix(self.label.clone());
            self.bar = Some(bar);
        }
    }

    fn on_step(&mut self, epoch: usize, step: usize, loss: f64, tokens_per_s: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "{epoch}/{}  loss {loss:.4}  {tokens_per_s:.0} tok/s",
                self.epochs
            ));
        } else if self.enabled && self.last_line.elapsed() >= Duration::from_secs(10) {
            self.last_line = Instant::now();
            tracing::info!(
                run = %self.label,
                epoch,
                step,
                total = self.total,
                loss,
                tokens_per_s = tokens_per_s.round(),
                "training"
            );
        }
    }

    fn on_epoch(&mut self, _model: &dyn TaskModel, log: &EpochLog) -> anyhow::Result<()> {
        let line = format!(
            "[{}] epoch {:>2}/{}  train loss {:.4}  eval {:.2}  ({:.1}s)",
            self.label,
            log.epoch,
            self.epochs,
            log.train_loss,
            log.eval_metric(),
            log.seconds
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.enabled => tracing::info!("{line}"),
            None => {}
        }
        Ok(())
    }

    fn on_finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
