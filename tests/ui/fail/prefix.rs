use propetl::prelude::*;
struct Block;

#[propetl(prefix(length = 0))]
struct Empty { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
