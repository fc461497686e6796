use propetl::prelude::*;
struct Block;

#[propetl(adapter, share = "layers", keep = 0.5, share = "tasks")]
struct Dup { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(lora(r = 8, r = 16))]
struct DupInner { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
