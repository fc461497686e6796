use propetl::prelude::*;
struct Block;
impl PetlSites for Block { const SITES: Sites = Sites::ALL; }

// After an attribute error, code using the generated API gets no follow-on errors: the
// fallback emits the `PROPETL` const and both trait impls.
#[propetl(adapter, keep = 2.0)]
struct Broken { #[propetl(layers)] blocks: Vec<Block>, #[propetl(state)] petl: PetlState }

fn uses(model: &mut Broken, varmap: &candle_nn::VarMap) -> propetl::runtime::Result<()> {
    let _spec: PetlConfig = Broken::PROPETL;
    let layout = PetlLayout::single_task(8, 2, 2);
    let state = <Broken as PetlSpec>::init_petl(&layout, &NumericOverrides::default(), varmap, &mut PetlRng::seed(0), &candle_core::Device::Cpu)?;
    *model.petl_mut() = state;
    let _ctx = model.petl_context("default")?;
    let _boxed: Box<&dyn ProPetlModel> = Box::new(model as &dyn ProPetlModel);
    Ok(())
}

fn main() {
    let _ = uses;
}
