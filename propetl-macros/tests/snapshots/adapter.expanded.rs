pub struct Encoder {
    embeddings: Embeddings,
    pub blocks: Vec<Block>,
    petl: PetlState,
}
impl Encoder {
    /// The ProPETL description given by this struct's `#[propetl(...)]` attribute.
    pub const PROPETL: ::propetl::runtime::PetlConfig = ::propetl::runtime::PetlConfig {
        method: ::propetl::runtime::Method::Adapter {
            size: ::propetl::runtime::AdapterSize::Reduction(12usize),
            activation: ::propetl::runtime::Activation::Relu,
            init_std: 0.02f64,
        },
        share: ::propetl::runtime::Share::Layers,
        mask: ::propetl::runtime::MaskKind::Binary,
        combine: ::propetl::runtime::Combine::Or,
        keep: 0.5f64,
    };
}
impl ::propetl::runtime::PetlSpec for Encoder {
    const PROPETL: ::propetl::runtime::PetlConfig = Self::PROPETL;
    const SITES: ::propetl::runtime::Sites = <Block as ::propetl::runtime::PetlSites>::SITES;
}
impl ::propetl::runtime::ProPetlModel for Encoder {
    fn petl(&self) -> &::propetl::runtime::PetlState {
        ::propetl::runtime::StateField::as_state(&self.petl)
    }
    fn petl_mut(&mut self) -> &mut ::propetl::runtime::PetlState {
        ::propetl::runtime::StateField::as_state_mut(&mut self.petl)
    }
    fn num_layers(&self) -> usize {
        ::propetl::runtime::LayerStack::layer_count(&self.blocks)
    }
}
const _: () = {
    if !<Block as ::propetl::runtime::PetlSites>::SITES.has_method("adapter") {
        ::core::panic!(
            "`Encoder` uses adapter, but its blocks `Block` declare no adapter site (see `impl PetlSites for Block`)"
        )
    }
};
