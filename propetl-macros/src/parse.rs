//! Parse and validate: tokens → a spanned model of the attribute and the struct.
//!
//! Every problem becomes a `syn::Error` pointing at the user's tokens; all of them are
//! collected (`Errors`) so one compile reports everything. Names, defaults and the rules
//! (with their messages) come from `propetl-vocab`, which the runtime checks with too.

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, Fields, Item, Lit, Meta, Token, Type};

use propetl_vocab::{
    self as vocab, defaults, unknown, MethodKind, Names, Structure, ACTIVATION, COMBINE,
    FIELD_ATTRS, KEYS, MASK, METHOD, METHODS, SHARE, TARGET,
};

/// Accumulates errors; `combine`s them at the end.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
    pub fn at(&mut self, tokens: impl quote::ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }
    pub fn take(self) -> Option<syn::Error> {
        self.0
    }
}

/// Adapter width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Reduction(usize),
    Bottleneck(usize),
}

/// A validated method with its hyper-parameters (defaults filled in).
#[derive(Debug, Clone, PartialEq)]
pub enum MethodSpec {
    Adapter {
        size: Size,
        activation: String,
        init_std: f64,
    },
    Lora {
        r: usize,
        alpha: f64,
        targets: Vec<String>,
    },
    Prefix {
        length: usize,
        hidden: usize,
    },
}

impl MethodSpec {
    fn kind(&self) -> MethodKind {
        match self {
            MethodSpec::Adapter { .. } => MethodKind::Adapter,
            MethodSpec::Lora { .. } => MethodKind::Lora,
            MethodSpec::Prefix { .. } => MethodKind::Prefix,
        }
    }
}

/// The validated attribute.
#[derive(Debug, Clone)]
pub struct Spec {
    pub method: MethodSpec,
    pub share: String,
    pub mask: String,
    pub combine: String,
    pub keep: f64,
    pub krate: syn::Path,
}

impl Spec {
    /// The paper's ProAdapter: used for the stub emitted next to errors.
    pub fn fallback() -> Self {
        Spec {
            method: MethodSpec::Adapter {
                size: Size::Reduction(defaults::ADAPTER_REDUCTION),
                activation: defaults::ADAPTER_ACTIVATION.into(),
                init_std: defaults::ADAPTER_INIT_STD,
            },
            share: defaults::SHARE.into(),
            mask: defaults::mask(defaults::SHARE).into(),
            combine: defaults::COMBINE.into(),
            keep: MethodKind::Adapter.default_keep(),
            krate: default_crate(),
        }
    }
}

pub fn default_crate() -> syn::Path {
    syn::parse_quote!(::propetl::runtime)
}

/// A value with the tokens it came from.
struct Given<T> {
    value: T,
    tokens: proc_macro2::TokenStream,
}

fn string_value(expr: &Expr, errors: &mut Errors, names: &Names) -> Option<String> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) => {
            let v = s.value();
            match names.find(&v) {
                Ok(_) => Some(v),
                Err(msg) => {
                    errors.at(s, msg);
                    None
                }
            }
        }
        other => {
            let key = names.what;
            errors.at(
                other,
                format!("`{key}` takes a string, e.g. {key} = \"{}\"", names.all[0]),
            );
            None
        }
    }
}

fn number_value(expr: &Expr, errors: &mut Errors, key: &str) -> Option<f64> {
    let (neg, inner) = match expr {
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => (true, &**expr),
        e => (false, e),
    };
    let v = match inner {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().ok(),
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<f64>().ok(),
        _ => None,
    };
    match v {
        Some(v) => Some(if neg { -v } else { v }),
        None => {
            errors.at(
                expr,
                format!("`{key}` takes a number literal, e.g. {key} = 0.5"),
            );
            None
        }
    }
}

fn int_value(expr: &Expr, errors: &mut Errors, key: &str) -> Option<usize> {
    match expr {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Int(i), ..
        }) => match i.base10_parse::<usize>() {
            Ok(v) => Some(v),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        other => {
            errors.at(
                other,
                format!("`{key}` takes a non-negative integer literal"),
            );
            None
        }
    }
}

fn key_of(meta: &Meta) -> String {
    meta.path()
        .get_ident()
        .map(|i| i.to_string())
        .unwrap_or_else(|| quote::quote!(#meta).to_string())
}

/// Parse the nested `key = value` list of a method; keys are returned as the vocabulary's.
fn nested(
    meta: &Meta,
    allowed: &[&'static str],
    errors: &mut Errors,
) -> Vec<(&'static str, Meta, Expr)> {
    let list = match meta {
        Meta::Path(_) => return vec![],
        Meta::List(l) => l,
        Meta::NameValue(nv) => {
            errors.at(
                nv,
                format!(
                    "`{}` is a method, not a key: write `{}` or `{}(...)`",
                    key_of(meta),
                    key_of(meta),
                    key_of(meta)
                ),
            );
            return vec![];
        }
    };
    let items = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
        Ok(items) => items,
        Err(e) => {
            errors.push(e);
            return vec![];
        }
    };
    let mut out: Vec<(&'static str, Meta, Expr)> = Vec::new();
    for item in items {
        let key = key_of(&item);
        let known = allowed.iter().copied().find(|k| *k == key);
        match (&item, known) {
            (Meta::NameValue(nv), Some(key)) => {
                if out.iter().any(|(k, _, _)| *k == key) {
                    errors.at(&nv.path, format!("duplicate key `{key}`"));
                    continue;
                }
                let value = nv.value.clone();
                out.push((key, item.clone(), value));
            }
            (Meta::NameValue(nv), None) => errors.at(
                &nv.path,
                unknown(&format!("{} option", key_of(meta)), &key, allowed),
            ),
            (other, _) => errors.at(
                other,
                format!(
                    "expected `key = value` inside {}(...), one of: {}",
                    key_of(meta),
                    allowed.join(", ")
                ),
            ),
        }
    }
    out
}

/// An integer size, checked by the vocabulary's rule (at least 1).
fn size_value(value: &Expr, errors: &mut Errors, key: &'static str) -> Option<usize> {
    let v = int_value(value, errors, key)?;
    match vocab::check_size(key, v) {
        Ok(()) => Some(v),
        Err(p) => {
            errors.at(value, p);
            None
        }
    }
}

fn parse_method(meta: &Meta, errors: &mut Errors) -> Option<MethodSpec> {
    let name = key_of(meta);
    let kind = MethodKind::parse(&name).expect("caller checks METHODS");
    let mut ok = true;
    let options = nested(meta, kind.options(), errors);
    match kind {
        MethodKind::Adapter => {
            let mut size: Option<Given<Size>> = None;
            let mut activation = defaults::ADAPTER_ACTIVATION.to_string();
            let mut init_std = defaults::ADAPTER_INIT_STD;
            for (key, item, value) in options {
                match key {
                    "reduction" | "bottleneck" => {
                        let Some(v) = size_value(&value, errors, key) else {
                            ok = false;
                            continue;
                        };
                        if let Some(prev) = &size {
                            let p = vocab::check_size_choice(true, true).unwrap_err();
                            let mut e = syn::Error::new_spanned(&item, p);
                            e.combine(syn::Error::new_spanned(
                                &prev.tokens,
                                "the other one is given here",
                            ));
                            errors.push(e);
                            ok = false;
                            continue;
                        }
                        let s = if key == "reduction" {
                            Size::Reduction(v)
                        } else {
                            Size::Bottleneck(v)
                        };
                        size = Some(Given {
                            value: s,
                            tokens: quote::quote!(#item),
                        });
                    }
                    "activation" => match string_value(&value, errors, &ACTIVATION) {
                        Some(a) => activation = a,
                        None => ok = false,
                    },
                    "init_std" => match number_value(&value, errors, "init_std") {
                        Some(v) => match vocab::check_init_std(v) {
                            Ok(()) => init_std = v,
                            Err(p) => {
                                errors.at(&value, p);
                                ok = false;
                            }
                        },
                        None => ok = false,
                    },
                    _ => unreachable!("filtered by nested()"),
                }
            }
            ok.then(|| MethodSpec::Adapter {
                size: size
                    .map(|s| s.value)
                    .unwrap_or(Size::Reduction(defaults::ADAPTER_REDUCTION)),
                activation,
                init_std,
            })
        }
        MethodKind::Lora => {
            let mut r = defaults::LORA_R;
            let mut alpha = defaults::LORA_ALPHA;
            let mut targets: Vec<String> = defaults::LORA_TARGETS
                .iter()
                .map(|t| t.to_string())
                .collect();
            for (key, _item, value) in options {
                match key {
                    "r" => match size_value(&value, errors, "r") {
                        Some(v) => r = v,
                        None => ok = false,
                    },
                    "alpha" => match number_value(&value, errors, "alpha") {
                        Some(v) => match vocab::check_alpha(v) {
                            Ok(()) => alpha = v,
                            Err(p) => {
                                errors.at(&value, p);
                                ok = false;
                            }
                        },
                        None => ok = false,
                    },
                    "targets" => match &value {
                        Expr::Array(ExprArray { elems, .. }) => {
                            if elems.is_empty() {
                                let p = vocab::check_targets::<&str>(&[]).unwrap_err();
                                errors.at(&value, p);
                                ok = false;
                                continue;
                            }
                            let mut seen: Vec<String> = vec![];
                            for e in elems {
                                let Some(t) = string_value(e, errors, &TARGET) else {
                                    ok = false;
                                    continue;
                                };
                                match vocab::check_target(&t, &seen) {
                                    Ok(()) => seen.push(t),
                                    Err(p) => {
                                        errors.at(e, p);
                                        ok = false;
                                    }
                                }
                            }
                            targets = seen;
                        }
                        other => {
                            errors.at(other, "`targets` takes an array of strings, e.g. targets = [\"q\", \"v\"]");
                            ok = false;
                        }
                    },
                    _ => unreachable!("filtered by nested()"),
                }
            }
            ok.then_some(MethodSpec::Lora { r, alpha, targets })
        }
        MethodKind::Prefix => {
            let mut length = defaults::PREFIX_LENGTH;
            let mut hidden = defaults::PREFIX_HIDDEN;
            for (key, _item, value) in options {
                match size_value(&value, errors, key) {
                    Some(v) if key == "length" => length = v,
                    Some(v) => hidden = v,
                    None => ok = false,
                }
            }
            ok.then_some(MethodSpec::Prefix { length, hidden })
        }
    }
}

/// Parse and validate the attribute arguments.
pub fn parse_spec(args: proc_macro2::TokenStream, errors: &mut Errors) -> Option<Spec> {
    let metas =
        match syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, args) {
            Ok(m) => m,
            Err(e) => {
                errors.push(e);
                return None;
            }
        };
    let mut method: Option<(String, proc_macro2::TokenStream)> = None;
    let mut method_spec: Option<MethodSpec> = None;
    let mut method_ok = true;
    let mut seen: Vec<(String, proc_macro2::TokenStream)> = vec![];
    let mut share: Option<Given<String>> = None;
    let mut mask: Option<Given<String>> = None;
    let mut combine: Option<Given<String>> = None;
    let mut keep: Option<Given<f64>> = None;
    let mut krate = default_crate();
    let mut ok = true;
    // a bare unknown word was probably meant as the method: don't also report "missing method"
    let mut unknown_word = false;

    for meta in &metas {
        let key = key_of(meta);
        if METHOD.contains(&key) {
            if let Some((first, first_tokens)) = &method {
                let mut e = syn::Error::new_spanned(
                    meta.path(),
                    format!(
                        "a model has exactly one PETL method, but `{key}` comes after `{first}`"
                    ),
                );
                e.combine(syn::Error::new_spanned(
                    first_tokens,
                    format!("`{first}` is chosen here"),
                ));
                errors.push(e);
                method_ok = false;
                continue;
            }
            method = Some((key.clone(), quote::quote!(#meta)));
            method_spec = parse_method(meta, errors);
            method_ok &= method_spec.is_some();
            continue;
        }
        let nv = match meta {
            Meta::NameValue(nv) => nv,
            other => {
                let mut all: Vec<&str> = METHODS.to_vec();
                all.extend_from_slice(KEYS);
                if key == "sparsity" {
                    errors.at(other, "`sparsity` is called `keep` here (the fraction of prototype entries a mask KEEPS): write `keep = 0.5`");
                } else {
                    errors.at(other, unknown("method or option", &key, &all));
                    unknown_word = true;
                }
                ok = false;
                continue;
            }
        };
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            let mut e = syn::Error::new_spanned(&nv.path, format!("duplicate key `{key}`"));
            e.combine(syn::Error::new_spanned(
                first,
                format!("`{key}` is first given here"),
            ));
            errors.push(e);
            ok = false;
            continue;
        }
        seen.push((key.clone(), quote::quote!(#nv)));
        let tokens = quote::quote!(#nv);
        match key.as_str() {
            "share" | "mask" | "combine" => {
                let names = match key.as_str() {
                    "share" => &SHARE,
                    "mask" => &MASK,
                    _ => &COMBINE,
                };
                match string_value(&nv.value, errors, names) {
                    Some(value) => {
                        let given = Some(Given { value, tokens });
                        match key.as_str() {
                            "share" => share = given,
                            "mask" => mask = given,
                            _ => combine = given,
                        }
                    }
                    None => ok = false,
                }
            }
            "keep" => match number_value(&nv.value, errors, "keep") {
                Some(v) => match vocab::check_keep(v) {
                    Ok(()) => keep = Some(Given { value: v, tokens }),
                    Err(p) => {
                        errors.at(&nv.value, p);
                        ok = false;
                    }
                },
                None => ok = false,
            },
            "crate" => match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(s), ..
                }) => match s.parse::<syn::Path>() {
                    Ok(p) => krate = p,
                    Err(e) => errors.push(syn::Error::new(
                        s.span(),
                        format!("`crate` must name a path: {e}"),
                    )),
                },
                other => errors.at(
                    other,
                    "`crate` takes a string, e.g. crate = \"propetl_runtime\"",
                ),
            },
            "sparsity" => {
                errors.at(nv, "`sparsity` is called `keep` here: it is the fraction of prototype entries a mask KEEPS (the reference code's flag was misnamed), so write `keep = <value>`");
                ok = false;
            }
            _ => {
                let mut all: Vec<&str> = KEYS.to_vec();
                all.extend_from_slice(METHODS);
                errors.at(&nv.path, unknown("option", &key, &all));
                ok = false;
            }
        }
    }

    if method.is_none() {
        if unknown_word {
            return None;
        }
        errors.push(syn::Error::new(
            Span::call_site(),
            "#[propetl] needs a PETL method: `adapter`, `lora` or `prefix`, e.g. #[propetl(adapter, share = \"layers\")]",
        ));
        return None;
    }

    let structure = Structure {
        share: share.as_ref().map(|s| s.value.as_str()),
        mask: mask.as_ref().map(|m| m.value.as_str()),
        combine: combine.as_ref().map(|c| c.value.as_str()),
        keep: keep.is_some(),
    };
    for problem in structure.check() {
        let tokens = match problem.key {
            "mask" => mask.as_ref().map(|m| &m.tokens),
            "keep" => keep.as_ref().map(|k| &k.tokens),
            _ => combine.as_ref().map(|c| &c.tokens),
        };
        match tokens {
            Some(t) => errors.at(t, problem),
            None => errors.push(syn::Error::new(Span::call_site(), problem)),
        }
        ok = false;
    }
    let (share_v, mask_v, combine_v) = (
        structure.share().to_string(),
        structure.mask().to_string(),
        structure.combine().to_string(),
    );
    let method_spec = method_spec.filter(|_| method_ok)?;
    if !ok {
        return None;
    }
    let keep_v = keep
        .map(|k| k.value)
        .unwrap_or_else(|| method_spec.kind().default_keep());
    Some(Spec {
        method: method_spec,
        share: share_v,
        mask: mask_v,
        combine: combine_v,
        keep: keep_v,
        krate,
    })
}

/// A field the attribute refers to.
pub struct MarkedField {
    pub member: syn::Ident,
    pub ty: Type,
}

/// The annotated struct with `#[propetl(...)]` field attributes removed.
pub struct ModelStruct {
    pub item: syn::ItemStruct,
    pub layers: Option<MarkedField>,
    pub state: Option<MarkedField>,
}

fn is_stack(ty: &Type) -> bool {
    match ty {
        Type::Array(_) => true,
        Type::Path(p) => {
            p.qself.is_none()
                && p.path.segments.last().is_some_and(|s| {
                    s.ident == "Vec" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
                })
        }
        Type::Group(g) => is_stack(&g.elem),
        Type::Paren(p) => is_stack(&p.elem),
        _ => false,
    }
}

/// Parse the item: it must be a struct with named fields, one `#[propetl(layers)]` field of
/// type `Vec<_>` or `[_; N]`, and one `#[propetl(state)]` field.
pub fn parse_struct(
    input: proc_macro2::TokenStream,
    errors: &mut Errors,
) -> Result<ModelStruct, proc_macro2::TokenStream> {
    let item: Item = match syn::parse2(input.clone()) {
        Ok(i) => i,
        Err(e) => {
            errors.push(e);
            return Err(input);
        }
    };
    let mut item = match item {
        Item::Struct(s) => s,
        Item::Enum(e) => {
            errors.at(e.enum_token, "#[propetl] describes a model struct with named fields; it cannot be used on an enum");
            return Err(input);
        }
        Item::Union(u) => {
            errors.at(u.union_token, "#[propetl] describes a model struct with named fields; it cannot be used on a union");
            return Err(input);
        }
        other => {
            errors.push(syn::Error::new(
                other.span(),
                "#[propetl] can only be used on a struct with named fields",
            ));
            return Err(input);
        }
    };
    let mut layers: Vec<MarkedField> = vec![];
    let mut state: Vec<MarkedField> = vec![];
    let mut unknown_attr = false;
    let named = matches!(item.fields, Fields::Named(_));
    if !named {
        errors.at(
            &item.fields,
            "#[propetl] needs named fields (one marked #[propetl(layers)], one #[propetl(state)])",
        );
    }
    for field in item.fields.iter_mut() {
        let mut kept = Vec::new();
        for attr in std::mem::take(&mut field.attrs) {
            if !attr.path().is_ident("propetl") {
                kept.push(attr);
                continue;
            }
            let parsed = attr.parse_args_with(Punctuated::<syn::Path, Token![,]>::parse_terminated);
            let paths = match parsed {
                Ok(p) => p,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            if paths.is_empty() {
                errors.at(&attr, "expected #[propetl(layers)] or #[propetl(state)]");
            }
            for p in paths {
                let name = p.get_ident().map(|i| i.to_string()).unwrap_or_default();
                let Some(ident) = field.ident.clone() else {
                    continue;
                };
                match name.as_str() {
                    "layers" => {
                        if !is_stack(&field.ty) {
                            errors.at(&field.ty, "#[propetl(layers)] marks the repeated blocks and must be a `Vec<Block>` or `[Block; N]`");
                        }
                        layers.push(MarkedField {
                            member: ident,
                            ty: field.ty.clone(),
                        });
                    }
                    "state" => state.push(MarkedField {
                        member: ident,
                        ty: field.ty.clone(),
                    }),
                    _ => {
                        errors.at(&p, unknown("field attribute", &name, FIELD_ATTRS));
                        unknown_attr = true;
                    }
                }
            }
        }
        field.attrs = kept;
    }
    if named {
        for (what, found, example) in [
            ("layers", &layers, "#[propetl(layers)] blocks: Vec<Block>"),
            ("state", &state, "#[propetl(state)] petl: PetlState"),
        ] {
            match found.len() {
                0 if unknown_attr => {}
                0 => errors.at(
                    &item.ident,
                    format!("missing #[propetl({what})] field: mark one field, e.g. `{example}`"),
                ),
                1 => {}
                _ => {
                    for extra in &found[1..] {
                        errors.at(
                            &extra.member,
                            format!(
                                "only one field may be #[propetl({what})]; `{}` is marked already",
                                found[0].member
                            ),
                        );
                    }
                }
            }
        }
    }
    let layers = layers.into_iter().next();
    let state = state.into_iter().next();
    Ok(ModelStruct {
        item,
        layers,
        state,
    })
}
