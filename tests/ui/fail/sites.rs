use propetl::prelude::*;

// A block that only has the adapter site after its FFN (like T5's blocks).
struct AdapterOnlyBlock;
impl PetlSites for AdapterOnlyBlock { const SITES: Sites = Sites::ADAPTER; }

// A block with LoRA on q and v only.
struct QvBlock;
impl PetlSites for QvBlock {
    const SITES: Sites = Sites { adapter: true, lora: &[LoraTarget::Q, LoraTarget::V], prefix: false };
}

#[propetl(lora)]
struct NoLoraSite { #[propetl(layers)] blocks: Vec<AdapterOnlyBlock>, #[propetl(state)] petl: PetlState }

#[propetl(prefix, share = "layers")]
struct NoPrefixSite { #[propetl(layers)] blocks: [AdapterOnlyBlock; 4], #[propetl(state)] petl: PetlState }

#[propetl(lora(targets = ["q", "o"]))]
struct NoOutputProjection { #[propetl(layers)] blocks: Vec<QvBlock>, #[propetl(state)] petl: PetlState }

fn main() {}
