use propetl::prelude::*;
struct Block;

#[propetl(lora(r = 0))]
struct ZeroRank { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(lora(targets = []))]
struct NoTargets { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(lora(targets = ["q", "value"]))]
struct UnknownTarget { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
