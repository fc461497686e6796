use propetl::prelude::*;
struct Block;

#[propetl(share = "layers")]
struct NoMethod { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, lora, share = "layers")]
struct TwoMethods { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
