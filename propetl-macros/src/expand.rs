//! Code generation from a validated model.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::Type;

use crate::parse::{parse_spec, parse_struct, Errors, MethodSpec, ModelStruct, Size, Spec};

/// Entry point: parse, validate, expand; on error emit `compile_error!`s plus a stub (the
/// struct, its `PROPETL` const and both trait impls, as thiserror's fallback does) so code
/// that uses the model gets no follow-on errors.
pub fn propetl(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let spec = parse_spec(args, &mut errors);
    let model = parse_struct(input, &mut errors);
    match (errors.take(), spec, model) {
        (None, Some(spec), Ok(model)) => expand(&spec, &model),
        (err, spec, model) => {
            let err = err.map(|e| e.to_compile_error());
            let stub = match model {
                Ok(m) => stub(&spec.unwrap_or_else(Spec::fallback), &m),
                Err(original) => original,
            };
            quote!(#err #stub)
        }
    }
}

/// The struct with every generated item, bodies unreachable: emitted next to errors only.
fn stub(spec: &Spec, model: &ModelStruct) -> TokenStream {
    let item = &model.item;
    let name = &item.ident;
    let (ig, tg, wc) = item.generics.split_for_impl();
    let k = &spec.krate;
    let inherent = inherent_const(spec, model);
    quote! {
        #item
        #inherent
        impl #ig #k::PetlSpec for #name #tg #wc {
            const PROPETL: #k::PetlConfig = Self::PROPETL;
            const SITES: #k::Sites = #k::Sites::ALL;
        }
        impl #ig #k::ProPetlModel for #name #tg #wc {
            fn petl(&self) -> &#k::PetlState {
                ::core::unreachable!()
            }
            fn petl_mut(&mut self) -> &mut #k::PetlState {
                ::core::unreachable!()
            }
            fn num_layers(&self) -> usize {
                ::core::unreachable!()
            }
        }
    }
}

/// The `PetlConfig` expression of a spec.
pub fn config_expr(spec: &Spec) -> TokenStream {
    let k = &spec.krate;
    let method = match &spec.method {
        MethodSpec::Adapter {
            size,
            activation,
            init_std,
        } => {
            let size = match size {
                Size::Reduction(r) => quote!(#k::AdapterSize::Reduction(#r)),
                Size::Bottleneck(b) => quote!(#k::AdapterSize::Bottleneck(#b)),
            };
            let act = match activation.as_str() {
                "relu" => quote!(Relu),
                "gelu_new" => quote!(GeluNew),
                _ => quote!(Gelu),
            };
            quote!(#k::Method::Adapter { size: #size, activation: #k::Activation::#act, init_std: #init_std })
        }
        MethodSpec::Lora { r, alpha, targets } => {
            let targets = targets.iter().map(|t| match t.as_str() {
                "q" => quote!(#k::LoraTarget::Q),
                "k" => quote!(#k::LoraTarget::K),
                "v" => quote!(#k::LoraTarget::V),
                _ => quote!(#k::LoraTarget::O),
            });
            quote!(#k::Method::Lora { r: #r, alpha: #alpha, targets: ::std::borrow::Cow::Borrowed(&[#(#targets),*]) })
        }
        MethodSpec::Prefix { length, hidden } => {
            quote!(#k::Method::Prefix { length: #length, hidden: #hidden })
        }
    };
    let share = match spec.share.as_str() {
        "none" => quote!(None),
        "layers" => quote!(Layers),
        "tasks" => quote!(Tasks),
        _ => quote!(LayersTasks),
    };
    let mask = if spec.mask == "binary" {
        quote!(Binary)
    } else {
        quote!(None)
    };
    let combine = match spec.combine.as_str() {
        "or" => quote!(Or),
        "and" => quote!(And),
        _ => quote!(Add),
    };
    let keep = spec.keep;
    quote! {
        #k::PetlConfig {
            method: #method,
            share: #k::Share::#share,
            mask: #k::MaskKind::#mask,
            combine: #k::Combine::#combine,
            keep: #keep,
        }
    }
}

fn inherent_const(spec: &Spec, model: &ModelStruct) -> TokenStream {
    let name = &model.item.ident;
    let (ig, tg, wc) = model.item.generics.split_for_impl();
    let config = config_expr(spec);
    let k = &spec.krate;
    quote! {
        impl #ig #name #tg #wc {
            /// The ProPETL description given by this struct's `#[propetl(...)]` attribute.
            pub const PROPETL: #k::PetlConfig = #config;
        }
    }
}

/// The block type of a `Vec<Block>` / `[Block; N]` field.
fn element_type(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Array(a) => Some(&a.elem),
        Type::Path(p) => match &p.path.segments.last()?.arguments {
            syn::PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
                syn::GenericArgument::Type(t) => Some(t),
                _ => None,
            }),
            _ => None,
        },
        Type::Group(g) => element_type(&g.elem),
        Type::Paren(p) => element_type(&p.elem),
        _ => None,
    }
}

/// Whether `ty` mentions one of the struct's type parameters.
fn mentions_generic(ty: &Type, generics: &syn::Generics) -> bool {
    let params: Vec<String> = generics
        .type_params()
        .map(|p| p.ident.to_string())
        .collect();
    fn walk(ts: TokenStream, params: &[String]) -> bool {
        ts.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => params.contains(&i.to_string()),
            proc_macro2::TokenTree::Group(g) => walk(g.stream(), params),
            _ => false,
        })
    }
    walk(quote!(#ty), &params)
}

/// A constant that fails to evaluate, at compile time, when the blocks declare no site for
/// the method (or a LoRA target).
fn site_check(spec: &Spec, model: &ModelStruct, elem: &Type) -> TokenStream {
    let k = &spec.krate;
    let name = &model.item.ident;
    let layers = model.layers.as_ref().expect("validated");
    let sites = quote_spanned!(layers.ty.span()=> <#elem as #k::PetlSites>::SITES);
    let elem_name = quote!(#elem).to_string().replace(' ', "");
    let (method, targets): (&str, Vec<&str>) = match &spec.method {
        MethodSpec::Adapter { .. } => ("adapter", vec![]),
        MethodSpec::Lora { targets, .. } => ("lora", targets.iter().map(String::as_str).collect()),
        MethodSpec::Prefix { .. } => ("prefix", vec![]),
    };
    let msg = format!(
        "`{name}` uses {method}, but its blocks `{elem_name}` declare no {method} site (see `impl PetlSites for {elem_name}`)"
    );
    let target_checks = targets.iter().map(|t| {
        let variant = syn::Ident::new(&t.to_uppercase(), proc_macro2::Span::call_site());
        let msg = format!(
            "`{name}` applies LoRA to `{t}`, but its blocks `{elem_name}` declare no LoRA site on `{t}` (see `impl PetlSites for {elem_name}`)"
        );
        quote_spanned!(layers.ty.span()=> if !#sites.has_lora_target(#k::LoraTarget::#variant) { ::core::panic!(#msg) })
    });
    quote_spanned! {layers.ty.span()=>
        const _: () = {
            if !#sites.has_method(#method) {
                ::core::panic!(#msg)
            }
            #(#target_checks)*
        };
    }
}

/// Expand a valid model.
pub fn expand(spec: &Spec, model: &ModelStruct) -> TokenStream {
    let item = &model.item;
    let name = &item.ident;
    let (ig, tg, wc) = item.generics.split_for_impl();
    let k = &spec.krate;
    let layers = model.layers.as_ref().expect("validated");
    let state = model.state.as_ref().expect("validated");
    let (lm, sm) = (&layers.member, &state.member);
    // Spanned at the user's field types: a wrong type is reported on the field.
    let count = quote_spanned!(layers.ty.span()=> #k::LayerStack::layer_count(&self.#lm));
    let get = quote_spanned!(state.ty.span()=> #k::StateField::as_state(&self.#sm));
    let get_mut = quote_spanned!(state.ty.span()=> #k::StateField::as_state_mut(&mut self.#sm));
    let inherent = inherent_const(spec, model);
    let elem = element_type(&layers.ty).expect("validated: Vec<_> or [_; N]");
    let generic_blocks = mentions_generic(elem, &item.generics);
    // a generic block type must declare its sites; a concrete one is checked at compile time
    let mut spec_generics = item.generics.clone();
    let check = if generic_blocks {
        spec_generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(#elem: #k::PetlSites));
        quote!()
    } else {
        site_check(spec, model, elem)
    };
    let spec_where = spec_generics.split_for_impl().2;
    let sites = quote_spanned!(layers.ty.span()=> <#elem as #k::PetlSites>::SITES);
    quote! {
        #item
        #inherent
        impl #ig #k::PetlSpec for #name #tg #spec_where {
            // the inherent const (inherent items take precedence over trait items)
            const PROPETL: #k::PetlConfig = Self::PROPETL;
            const SITES: #k::Sites = #sites;
        }
        impl #ig #k::ProPetlModel for #name #tg #wc {
            fn petl(&self) -> &#k::PetlState {
                #get
            }
            fn petl_mut(&mut self) -> &mut #k::PetlState {
                #get_mut
            }
            fn num_layers(&self) -> usize {
                #count
            }
        }
        #check
    }
}

#[cfg(test)]
mod tests {
    //! Snapshot tests of the expansion of one struct per method
    //! (`tests/snapshots/*.expanded.rs`; regenerate with `UPDATE_SNAPSHOTS=1`).

    use super::*;
    use quote::quote;

    fn check(name: &str, args: TokenStream, item: TokenStream) {
        let out = propetl(args, item);
        let file: syn::File = syn::parse2(out).expect("expansion parses as a file");
        let pretty = prettyplease::unparse(&file);
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(format!("{name}.expanded.rs"));
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &pretty).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            pretty, expected,
            "expansion of {name} changed; rerun with UPDATE_SNAPSHOTS=1 and review"
        );
    }

    #[test]
    fn adapter_expansion() {
        check(
            "adapter",
            quote!(
                adapter(reduction = 12, activation = "relu"),
                share = "layers",
                keep = 0.5
            ),
            quote!(
                pub struct Encoder {
                    embeddings: Embeddings,
                    #[propetl(layers)]
                    pub blocks: Vec<Block>,
                    #[propetl(state)]
                    petl: PetlState,
                }
            ),
        );
    }

    #[test]
    fn lora_expansion() {
        check(
            "lora",
            quote!(
                lora(r = 32, alpha = 48, targets = ["q", "v"]),
                share = "layers",
                keep = 0.1,
                crate = "propetl_runtime"
            ),
            quote!(
                struct Encoder<B> {
                    #[propetl(layers)]
                    blocks: [B; 12],
                    #[propetl(state)]
                    petl: PetlState,
                }
            ),
        );
    }

    #[test]
    fn prefix_expansion() {
        check(
            "prefix",
            quote!(
                prefix(length = 64, hidden = 512),
                share = "layers+tasks",
                combine = "or"
            ),
            quote!(
                struct Encoder {
                    #[propetl(layers)]
                    blocks: Vec<Block>,
                    #[propetl(state)]
                    petl: PetlState,
                }
            ),
        );
    }

    #[test]
    fn errors_emit_a_stub() {
        let out = propetl(
            quote!(adapter, keep = 2.0),
            quote!(
                struct S {
                    #[propetl(layers)]
                    b: Vec<u8>,
                    #[propetl(state)]
                    p: PetlState,
                }
            ),
        )
        .to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(out.contains("struct S"), "{out}");
        assert!(out.contains("PROPETL"), "{out}");
        assert!(
            !out.contains("# [propetl"),
            "field attributes must be stripped: {out}"
        );
    }
}
