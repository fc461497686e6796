use propetl::prelude::*;
struct Block;

#[propetl(adapter(reduction = 12, bottleneck = 64))]
struct Both { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter(bottleneck = 0))]
struct ZeroBottleneck { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
