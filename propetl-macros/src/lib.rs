//! The `#[propetl(...)]` attribute: describe a ProPETL model at compile time.
//!
//! A sketch (`ignore`: this crate cannot depend on the runtime it targets); the runnable
//! version is `examples/custom_transformer.rs` of the `propetl` crate:
//!
//! ```ignore
//! use propetl::prelude::*;
//!
//! #[propetl(adapter(reduction = 12, activation = "relu"), share = "layers", keep = 0.5)]
//! pub struct MyEncoder {
//!     embeddings: Embeddings,
//!     #[propetl(layers)]
//!     blocks: Vec<Block>,
//!     #[propetl(state)]
//!     petl: PetlState,
//! }
//! ```
//!
//! The macro checks the description at compile time (spanned errors, all reported at once),
//! emits `MyEncoder::PROPETL` (a `PetlConfig` const) and implements `ProPetlModel`, which
//! gives construction of the prototype and mask bank, per-(layer, task) effective modules,
//! optimizer groups, the storage report, save/load, freezing and merging.
//!
//! Structure: [`parse`] turns tokens into a spanned model of the attribute and the struct,
//! collecting every error; [`expand`] generates code from a valid model.

mod expand;
mod parse;

use proc_macro::TokenStream;

/// Describe a ProPETL model; see the crate docs for the language.
#[proc_macro_attribute]
pub fn propetl(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::propetl(args.into(), input.into()).into()
}
