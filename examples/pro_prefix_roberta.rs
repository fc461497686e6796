//! The paper's pro_prefix variant on RoBERTa (method page §3–§4):
//! `cargo run --release --example pro_prefix_roberta -- [MODEL_DIR GLUE_DIR [TASK]]`.
//! Without arguments: the built-in tiny RoBERTa on small synthetic GLUE data.

fn main() -> anyhow::Result<()> {
    propetl::run::example_main("pro_prefix")
}
