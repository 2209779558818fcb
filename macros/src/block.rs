//! `#[coalesce]` on an `impl` block: the methods marked `#[coalesce(..)]` in it
//! are expanded knowing that they are associated items.
//!
//! - In an inherent impl, an associated fn without `self` reaches its batch fn
//!   and companions through `Self::` (on the fn alone, the macro cannot tell it
//!   from a free fn).
//! - In a trait impl, the coalesced methods and their companions (`_batch`,
//!   `_many`) go to an inherent impl of the same type, and the trait impl gets a
//!   method that delegates to the coalesced one: a trait can declare only the
//!   single-key method, so the companions cannot stand in the trait impl.
//!
//! ```text
//! #[coalesce]                       // above #[async_trait], if there is one
//! impl UserRepo for PgRepo {
//!     #[coalesce(window = "2ms")]
//!     async fn get(&self, ids: Vec<i64>) -> Result<HashMap<i64, User>, DbError> { .. }
//! }
//! ```
//!
//! becomes `impl PgRepo { pub(crate) async fn get(&self, id: i64) -> .. ;
//! get_batch; get_many }` and `impl UserRepo for PgRepo { async fn get(&self, id:
//! i64) -> .. { Self::get(self, id).await } }` (an inherent item wins the path
//! `Self::get`).

use proc_macro2::TokenStream;
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, ImplItem, ItemFn, ItemImpl, Meta, Pat, Visibility};

use crate::expand::{self, Site};

/// Whether `attr` is `#[coalesce(..)]` (under any path: `#[coalesce::coalesce]`).
fn is_coalesce(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "coalesce")
}

/// The whole `#[coalesce] impl ..` expansion.
pub fn expand(args: TokenStream, mut block: ItemImpl) -> TokenStream {
    let mut errors = TokenStream::new();
    if !args.is_empty() {
        errors.extend(
            syn::Error::new_spanned(
                &args,
                "#[coalesce] on an `impl` block takes no arguments; give them to each method: \
                 `#[coalesce(window = \"5ms\")] async fn ..`",
            )
            .to_compile_error(),
        );
    }
    let self_ty = block.self_ty.clone();
    let is_trait = block.trait_.is_some();
    if is_trait {
        if let Some(why) = no_inherent_impl(&block) {
            let error = syn::Error::new_spanned(
                &block.self_ty,
                format!(
                    "#[coalesce] on a trait impl puts the coalesced fns' companions (the \
                     batch fn, `_many`) in an inherent impl of the self type, and {why} \
                     cannot have one: implement the trait for a type of this crate, or \
                     coalesce a method of an inherent impl and call it from the trait"
                ),
            );
            return error.to_compile_error();
        }
    }
    let mut kept = Vec::new();
    let mut inherent = Vec::new();
    for item in std::mem::take(&mut block.items) {
        let ImplItem::Fn(method) = item else {
            kept.push(item.into_token_stream());
            continue;
        };
        let Some(position) = method.attrs.iter().position(is_coalesce) else {
            kept.push(method.into_token_stream());
            continue;
        };
        let mut attrs = method.attrs.clone();
        let attr = attrs.remove(position);
        // Above `#[coalesce]`: docs, `cfg`s and lint levels go to both fns,
        // anything else (`#[tracing::instrument]`) to the batch fn alone.
        let (shared, above): (Vec<_>, Vec<_>) = attrs
            .drain(..position)
            .partition(|attr| expand::is_named(attr, expand::SHARED_ATTRS));
        attrs.splice(0..0, shared);
        let args = match &attr.meta {
            Meta::Path(_) => TokenStream::new(),
            Meta::List(list) => list.tokens.clone(),
            Meta::NameValue(_) => {
                errors.extend(
                    syn::Error::new_spanned(&attr, "write `#[coalesce(..)]` or `#[coalesce]`")
                        .to_compile_error(),
                );
                TokenStream::new()
            }
        };
        let vis = match (&method.vis, is_trait) {
            (Visibility::Inherited, true) => syn::parse_quote!(pub(crate)),
            (vis, _) => vis.clone(),
        };
        let func = ItemFn {
            attrs,
            vis,
            sig: method.sig.clone(),
            block: Box::new(method.block.clone()),
        };
        let site = Site::Impl {
            self_ty: self_ty.clone(),
            above,
        };
        let expanded = expand::function(args.clone(), &func, &site);
        if is_trait {
            inherent.push(expanded);
            kept.push(delegate(&args, &func));
        } else {
            kept.push(expanded);
        }
    }
    let ItemImpl {
        attrs,
        defaultness,
        unsafety,
        generics,
        trait_,
        self_ty,
        ..
    } = &block;
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let trait_path = trait_
        .as_ref()
        .map(|(bang, path, for_token)| quote!(#bang #path #for_token));
    // The trait impl's `cfg`s and lint levels go to the inherent impl that
    // holds its batch fns too (a `#[allow(non_snake_case)]` on the impl
    // covers their parameters as well).
    let cfgs = attrs.iter().filter(|attr| {
        attr.path().is_ident("deprecated")
            || (!attr.path().is_ident("doc") && expand::is_named(attr, expand::SHARED_ATTRS))
    });
    let inherent = is_trait.then(|| {
        quote! {
            #(#cfgs)*
            impl #impl_generics #self_ty #where_clause {
                #(#inherent)*
            }
        }
    });
    quote! {
        #errors
        #(#attrs)*
        #defaultness #unsafety impl #impl_generics #trait_path #self_ty #where_clause {
            #(#kept)*
        }
        #inherent
    }
}

/// The trait's method: the single-key signature, calling the coalesced method
/// of the inherent impl.
fn delegate(args: &TokenStream, func: &ItemFn) -> TokenStream {
    let mut sig = expand::single_key_signature_of(args, func);
    let name = &sig.ident;
    let mut call_args = Vec::new();
    for input in &mut sig.inputs {
        match input {
            FnArg::Receiver(receiver) => call_args.push(receiver.self_token.to_token_stream()),
            FnArg::Typed(arg) => match &*arg.pat {
                Pat::Ident(pat) => call_args.push(pat.ident.to_token_stream()),
                // The analysis reports a pattern parameter on the fn itself.
                other => {
                    let error = syn::Error::new(
                        other.span(),
                        "#[coalesce] needs a plain parameter name here",
                    );
                    return error.to_compile_error();
                }
            },
        }
    }
    let docs = func.attrs.iter().filter(|attr| {
        ["doc", "cfg", "allow"]
            .iter()
            .any(|name| attr.path().is_ident(name))
    });
    quote! {
        #(#docs)*
        // It calls the inherent fn, which may be `#[deprecated]`.
        #[allow(deprecated, clippy::missing_errors_doc)]
        #sig {
            Self::#name(#(#call_args),*).await
        }
    }
}

/// Why a trait impl's self type cannot have an inherent impl, if it visibly
/// cannot: a type parameter of the impl (a blanket impl), a reference, or
/// one of std's types (`Arc<Db>`: a foreign type; a
/// foreign type of another crate is not visible from here, and rustc says so).
fn no_inherent_impl(block: &ItemImpl) -> Option<String> {
    match &*block.self_ty {
        syn::Type::Reference(_) => Some("a reference".to_owned()),
        syn::Type::Path(path) if path.qself.is_none() => {
            let last = path.path.segments.last()?;
            let is_param = path.path.segments.len() == 1
                && last.arguments.is_empty()
                && block
                    .generics
                    .type_params()
                    .any(|param| param.ident == last.ident);
            if is_param {
                return Some(format!("`{}`, a type parameter of the impl,", last.ident));
            }
            [
                "Arc", "Rc", "Box", "Vec", "Option", "Result", "String", "HashMap",
            ]
            .iter()
            .any(|std| last.ident == std)
            .then(|| format!("`{}` (std's)", last.ident))
        }
        _ => None,
    }
}
