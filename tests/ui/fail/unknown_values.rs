use propetl::prelude::*;
struct Block;

// Every error of one attribute is reported in the same compile.
#[propetl(adaptor, share = "layer", mask = "binray", combine = "xor")]
struct Typos { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter(activation = "gelu-new"), shared = "layers")]
struct Activation { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
