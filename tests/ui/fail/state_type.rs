use propetl::prelude::*;
struct Block;
impl PetlSites for Block { const SITES: Sites = Sites::ALL; }

// A trait-bound failure in generated code points at the user's field type.
#[propetl(adapter)]
struct WrongState { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: Vec<f32> }

fn main() {}
