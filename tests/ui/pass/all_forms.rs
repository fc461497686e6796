use propetl::prelude::*;

struct Block;
impl PetlSites for Block { const SITES: Sites = Sites::ALL; }

#[propetl(adapter, share = "layers+tasks", mask = "binary")]
struct A { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter(reduction = 12, activation = "relu"), share = "layers", mask = "binary", keep = 0.5)]
struct B { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(lora(r = 32, alpha = 48, targets = ["q", "v"]), share = "layers", keep = 0.1)]
struct C { #[propetl(layers)] blocks: [Block; 12], #[propetl(state)] petl: PetlState }

#[propetl(prefix(length = 64, hidden = 512), share = "layers", keep = 0.1)]
struct D { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, share = "none")]
struct E { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, share = "layers", mask = "none")]
struct F { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

#[propetl(adapter, share = "layers+tasks", combine = "or", keep = 0.3)]
struct G<T> { #[propetl(layers)] blocks: Vec<T>, #[propetl(state)] petl: PetlState }

#[propetl(adapter(bottleneck = 48, activation = "gelu_new", init_std = 0.01), share = "tasks", keep = 1)]
struct H { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState, #[allow(dead_code)] other: u8 }

fn main() {
    assert_eq!(A::PROPETL.share, Share::LayersTasks);
    assert_eq!(A::PROPETL.keep, 0.5);
    assert_eq!(B::PROPETL, PetlConfig::pro(Method::ADAPTER));
    assert_eq!(C::PROPETL, PetlConfig::pro(Method::LORA));
    assert_eq!(D::PROPETL, PetlConfig::pro(Method::PREFIX));
    assert_eq!(E::PROPETL, PetlConfig::unshared(Method::ADAPTER));
    assert_eq!(F::PROPETL.mask, MaskKind::None);
    assert_eq!(<G<Block> as PetlSpec>::PROPETL.keep, 0.3);
    // the instance API is object-safe: one `dyn` type for models of different types
    fn state_of(m: &dyn ProPetlModel) -> &PetlState { m.petl() }
    let _ = state_of;
    assert_eq!(<C as PetlSpec>::SITES, Sites::ALL);
    assert_eq!(H::PROPETL.keep, 1.0);
    let _ = (std::mem::size_of::<E>(), std::mem::size_of::<F>(), std::mem::size_of::<H>());
}
