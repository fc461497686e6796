struct Encoder {
    blocks: Vec<Block>,
    petl: PetlState,
}
impl Encoder {
    /// The ProPETL description given by this struct's `#[propetl(...)]` attribute.
    pub const PROPETL: ::propetl::runtime::PetlConfig = ::propetl::runtime::PetlConfig {
        method: ::propetl::runtime::Method::Prefix {
            length: 64usize,
            hidden: 512usize,
        },
        share: ::propetl::runtime::Share::LayersTasks,
        mask: ::propetl::runtime::MaskKind::Binary,
        combine: ::propetl::runtime::Combine::Or,
        keep: 0.1f64,
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
    if !<Block as ::propetl::runtime::PetlSites>::SITES.has_method("prefix") {
        ::core::panic!(
            "`Encoder` uses prefix, but its blocks `Block` declare no prefix site (see `impl PetlSites for Block`)"
        )
    }
};
