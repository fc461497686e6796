use propetl::prelude::*;
struct Block;

#[propetl(adapter, share = "layers", combine = "or")]
struct NoTasks { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
