struct Encoder<B> {
    blocks: [B; 12],
    petl: PetlState,
}
impl<B> Encoder<B> {
    /// The ProPETL description given by this struct's `#[propetl(...)]` attribute.
    pub const PROPETL: propetl_runtime::PetlConfig = propetl_runtime::PetlConfig {
        method: propetl_runtime::Method::Lora {
            r: 32usize,
            alpha: 48f64,
            targets: ::std::borrow::Cow::Borrowed(
                &[propetl_runtime::LoraTarget::Q, propetl_runtime::LoraTarget::V],
            ),
        },
        share: propetl_runtime::Share::Layers,
        mask: propetl_runtime::MaskKind::Binary,
        combine: propetl_runtime::Combine::Or,
        keep: 0.1f64,
    };
}
impl<B> propetl_runtime::PetlSpec for Encoder<B>
where
    B: propetl_runtime::PetlSites,
{
    const PROPETL: propetl_runtime::PetlConfig = Self::PROPETL;
    const SITES: propetl_runtime::Sites = <B as propetl_runtime::PetlSites>::SITES;
}
impl<B> propetl_runtime::ProPetlModel for Encoder<B> {
    fn petl(&self) -> &propetl_runtime::PetlState {
        propetl_runtime::StateField::as_state(&self.petl)
    }
    fn petl_mut(&mut self) -> &mut propetl_runtime::PetlState {
        propetl_runtime::StateField::as_state_mut(&mut self.petl)
    }
    fn num_layers(&self) -> usize {
        propetl_runtime::LayerStack::layer_count(&self.blocks)
    }
}
