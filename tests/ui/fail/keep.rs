use propetl::prelude::*;
struct Block;

#[propetl(adapter, keep = 0.0)]
struct Zero { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, keep = 1.5)]
struct TooBig { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(lora, sparsity = 0.1)]
struct Sparsity { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, mask = "none", keep = 0.5)]
struct KeepWithoutMask { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, share = "none", mask = "binary")]
struct MaskedBaseline { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn main() {}
