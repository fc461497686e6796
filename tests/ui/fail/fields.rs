use propetl::prelude::*;
use std::collections::HashMap;
struct Block;

#[propetl(adapter)]
struct MissingLayers { blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter)]
struct TwoLayers { #[propetl(layers)] a: Vec<Block>, #[propetl(layers)] b: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter)]
struct NotAVec { #[propetl(layers)] blocks: HashMap<usize, Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter)]
struct UnknownFieldAttr { #[propetl(layer)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
