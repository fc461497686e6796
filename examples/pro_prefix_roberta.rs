//! The paper's pro_prefix variant on RoBERTa (method page §3–§4):
//! `cargo run --release --example pro_prefix_roberta -- [MODEL_DIR GLUE_DIR [TASK]]`.
//! Without arguments: the built-in tiny RoBERTa on small synthetic GLUE data.

#[path = "support/mod.rs"]
mod support;

fn main() -> anyhow::Result<()> {
    support::main_for(propetl::runtime::Variant::ProPrefix)
}
