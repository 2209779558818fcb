//! Code generation: parse → analyze → generate, or the fallback on error.
//!
//! The expansion of
//!
//! ```text
//! #[coalesce(window = "5ms")]
//! pub async fn load(ids: Vec<u64>, region: Region) -> Result<HashMap<u64, User>, DbError> { body }
//! ```
//!
//! is, in outline (paths through `::coalesce::__private` shortened):
//!
//! ```text
//! pub async fn load(ids: u64, region: Region) -> Result<Option<User>, ::coalesce::Error<DbError>> {
//!     const __COALESCE_NAME: &str = concat!(module_path!(), "::", "load");
//!     static __COALESCE_CORE: Slot<Region, u64, User, DbError> = Slot::new();
//!     let __coalesce_group = Clone::clone(&region);
//!     load::<Region, u64, User, DbError, _, _>(
//!         &__COALESCE_CORE,
//!         || Config::new(__COALESCE_NAME).window(Duration::from_nanos(5000000)),
//!         __coalesce_group,
//!         ids,
//!         move |__coalesce_keys| load_batch(__coalesce_keys, region),
//!     )
//!     .await
//! }
//! /// (the fn's docs) Batch form of [`load`](load), ...
//! pub async fn load_batch(ids: Vec<u64>, region: Region) -> Result<HashMap<u64, User>, DbError> { body }
//! ```
//!
//! A method calls `load_in(&__COALESCE_CORE, config, self, ...)` with a closure
//! that calls `self.load_batch(...)`; a `Vec` shape wraps the result in `required`.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Item, ItemFn, Pat, PatIdent, ReturnType, Type};

use crate::args::{Args, Dispatch};
use crate::error::Errors;
use crate::signature::{self, ShapeKind, Signature};

/// The whole macro: `#[coalesce(args)] item`.
pub fn coalesce(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => func,
        _ => {
            let mut error = syn::Error::new(
                Span::call_site(),
                "#[coalesce] goes on an `async fn` with a body that takes a `Vec<K>` of keys",
            );
            if let Err(args_error) = Args::parse(args) {
                error.combine(args_error);
            }
            let error = error.to_compile_error();
            return quote!(#error #item);
        }
    };

    let mut errors = Errors::default();
    let args = errors.check(Args::parse(args));
    let signature = signature::analyze(&func, &mut errors);
    match (errors.finish(), args) {
        (Ok(()), Some(args)) => expand(&func, &args, &signature),
        (Err(error), _) => fallback(&func, &signature, &error),
        // `check` records an error whenever it returns `None`.
        (Ok(()), None) => unreachable!(),
    }
}

/// The single-key fn and the batch fn, for a signature without problems.
fn expand(func: &ItemFn, args: &Args, signature: &Signature) -> TokenStream {
    let (Some((key_param, key_type)), Some(shape)) = (signature.key_param(), &signature.shape)
    else {
        unreachable!("the analysis reports a missing key or shape as an error")
    };
    let Some(key) = &key_param.ident else {
        unreachable!("the analysis reports a pattern parameter as an error")
    };
    let private = quote!(::coalesce::__private);
    let value_type = &shape.value;
    let error_type = match &shape.error {
        Some(error) => error.to_token_stream(),
        None => quote!(::core::convert::Infallible),
    };
    let group_var = Ident::new("__coalesce_group", Span::mixed_site());
    let keys_var = Ident::new("__coalesce_keys", Span::mixed_site());
    let this_var = Ident::new("__coalesce_this", Span::mixed_site());

    // The group: the `group = expr` value and every extra parameter. Calls share
    // a batch only if all of these are equal.
    let mut group_types = Vec::new();
    let mut group_values = Vec::new();
    if let Some(group) = &args.group {
        let expr = &group.value;
        group_types.push(quote!(#private::AnyKey));
        group_values.push(quote_spanned!(group.span=> #private::AnyKey::new(#expr)));
    }
    let mut extra_types = Vec::new();
    let mut batch_args = Vec::new();
    for (index, param) in signature.params.iter().enumerate() {
        let ident = param.ident.as_ref().expect("reported by the analysis");
        if Some(index) == signature.key {
            batch_args.push(keys_var.to_token_stream());
        } else {
            extra_types.push(&*param.arg.ty);
            group_types.push(param.arg.ty.to_token_stream());
            group_values.push(quote!(::core::clone::Clone::clone(&#ident)));
            // Cloned per batch call: the batch closure may run more than once
            // (`isolate` retries the halves of a failed batch).
            batch_args.push(quote!(::core::clone::Clone::clone(&#ident)));
        }
    }
    // A parameter type that is not `Hash + Eq + ...` is reported on the group
    // type argument: one parameter alone is the group (no 1-tuple, whose error
    // would list every tuple impl of `Hash`); a tuple points at the parameter list.
    let parens = func.sig.paren_token.span;
    let (group_type, group_value, group_range) = match (&group_types[..], &group_values[..]) {
        ([], []) => (quote!(()), quote!(()), None),
        ([ty], [value]) if args.group.is_none() => {
            (ty.clone(), value.clone(), Some(token_range(ty)))
        }
        _ => (
            quote_spanned!(parens.join()=> (#(#group_types,)*)),
            quote!((#(#group_values,)*)),
            Some((parens.open(), parens.close())),
        ),
    };
    let (group_let, group_arg) = if group_values.is_empty() {
        (None, group_value)
    } else {
        (
            Some(quote!(let #group_var = #group_value;)),
            group_var.to_token_stream(),
        )
    };

    let config = config(args);
    let name = match &args.name {
        Some(name) => name.value.to_token_stream(),
        None => {
            let fn_name = func.sig.ident.unraw().to_string();
            quote!(::core::concat!(::core::module_path!(), "::", #fn_name))
        }
    };
    let batch_name = batch_name(func);
    // Every bound on the user's types is checked by this one call, whose type
    // arguments are the user's own tokens: "`K: Hash` is not satisfied" lands on
    // `K` in the signature. rustc reports an unmet bound again on the call
    // expression and on its `.await`. Those get the exact extent (first to last
    // token) of the first type that can fall short, so that rustc merges the
    // reports into one; a primitive or `String` cannot.
    let type_args = quote!(#group_type, #key_type, #value_type, #error_type);
    let (first, last) = [
        Some(key_type).filter(|ty| !is_plain(ty)).map(token_range),
        Some(value_type).filter(|ty| !is_plain(ty)).map(token_range),
        group_range.filter(|_| !extra_types.iter().all(|ty| is_plain(ty))),
        shape
            .error
            .as_ref()
            .filter(|ty| !is_plain(ty))
            .map(token_range),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or_else(|| token_range(key_type));
    // A per-key map is handed to the engine as such: an `Err` entry fails only
    // its own key.
    let per_key = match (shape.kind, shape.outer_result) {
        (ShapeKind::PerKey, true) => Some(quote!(#private::per_key)),
        (ShapeKind::PerKey, false) => Some(quote!(#private::PerKey)),
        _ => None,
    };
    let wrap = |call: TokenStream| match &per_key {
        Some(adapter) => {
            let fut = Ident::new("__coalesce_fut", Span::mixed_site());
            quote!({ let #fut = #call; async move { #adapter(#fut.await) } })
        }
        None => call,
    };
    let free_call = wrap(quote!(#batch_name(#(#batch_args),*)));
    let method_call = wrap(quote!(#this_var.#batch_name(#(#batch_args),*)));
    let load = match &signature.receiver {
        None => {
            let call_args = parenthesized(
                last,
                quote! {
                    &__COALESCE_CORE,
                    || #config,
                    #group_arg,
                    #key,
                    move |#keys_var| #free_call,
                },
            );
            quote_spanned!(first=> ::coalesce::__private::load::<#type_args, _, _> #call_args)
        }
        Some(receiver) => {
            let this = &receiver.self_token;
            let this_type = quote_spanned!(this.span=> _);
            let call_args = parenthesized(
                last,
                quote! {
                    &__COALESCE_CORE,
                    || #config,
                    #this,
                    #group_arg,
                    #key,
                    move |#this_var, #keys_var| #method_call,
                },
            );
            quote_spanned! {first=>
                ::coalesce::__private::load_in::<#type_args, #this_type, _, _> #call_args
            }
        }
    };
    let dot = syn::Token![.](first);
    let await_kw = Ident::new("await", last);
    let awaited = quote!(#load #dot #await_kw);
    let result = match shape.kind {
        ShapeKind::Map | ShapeKind::PerKey => awaited,
        ShapeKind::List => {
            let arg = parenthesized(last, quote!(#awaited, __COALESCE_NAME));
            quote_spanned!(first=> ::coalesce::__private::required #arg)
        }
    };

    let single = single_key_signature(func, signature);
    let attrs = &func.attrs;
    let vis = &func.vis;
    let batch = batch_fn(func);
    let body = quote_spanned! {func.sig.ident.span()=> {
        const __COALESCE_NAME: &str = #name;
        static __COALESCE_CORE: #private::Slot<#type_args> = #private::Slot::new();
        #group_let
        #result
    }};
    quote! {
        #(#attrs)*
        #vis #single #body

        #batch
    }
}

/// The spans of the first and the last token of `tokens`.
fn token_range(tokens: impl ToTokens) -> (Span, Span) {
    let mut spans = tokens
        .into_token_stream()
        .into_iter()
        .map(|token| token.span());
    let first = spans.next().unwrap_or_else(Span::call_site);
    (first, spans.last().unwrap_or(first))
}

/// Whether `ty` is a primitive or `String`, which meet every bound the
/// coalescer puts on its types.
fn is_plain(ty: &Type) -> bool {
    const PLAIN: &[&str] = &[
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
        "bool", "char", "String",
    ];
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .get_ident()
            .is_some_and(|ident| PLAIN.iter().any(|plain| ident == plain)),
        _ => false,
    }
}

/// `(tokens)`, with the parentheses at `span`.
fn parenthesized(span: Span, tokens: TokenStream) -> TokenStream {
    let mut group = Group::new(Delimiter::Parenthesis, tokens);
    group.set_span(span);
    group.into_token_stream()
}

/// The expression building the coalescer's `Config`; only the arguments the
/// user wrote are set, the rest keep the runtime's defaults.
fn config(args: &Args) -> TokenStream {
    let private = quote!(::coalesce::__private);
    let mut config = quote!(#private::Config::new(__COALESCE_NAME));
    if let Some(window) = &args.window {
        let nanos = window.value;
        config = quote!(#config.window(#private::Duration::from_nanos(#nanos)));
    }
    if let Some(max_batch) = &args.max_batch {
        let n = max_batch.value;
        config = quote!(#config.max_batch(#n));
    }
    if let Some(max_in_flight) = &args.max_in_flight {
        let n = max_in_flight.value;
        config = quote!(#config.max_in_flight(#n));
    }
    if let Some(isolate) = &args.isolate {
        let n = u32::try_from(isolate.value).unwrap_or(u32::MAX);
        config = quote!(#config.isolate(#n));
    }
    if let Some(max_pending) = &args.max_pending {
        let n = max_pending.value;
        config = quote!(#config.max_pending(#n));
    }
    if let Some(timeout) = &args.timeout {
        let nanos = timeout.value;
        config = quote!(#config.timeout(#private::Duration::from_nanos(#nanos)));
    }
    if let Some(dispatch) = &args.dispatch {
        let variant = match dispatch.value {
            Dispatch::Window => quote!(Window),
            Dispatch::Adaptive => quote!(Adaptive),
        };
        config = quote!(#config.dispatch(#private::Dispatch::#variant));
    }
    config
}

/// On any error: the errors, the single-key fn with a stub body and the batch fn,
/// so that call sites of either do not add errors of their own.
fn fallback(func: &ItemFn, signature: &Signature, error: &syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    let mut single = single_key_signature(func, signature);
    single.constness = None;
    single.abi = None;
    let attrs = &func.attrs;
    let vis = &func.vis;
    let batch = batch_fn(func);
    quote! {
        #error
        #(#attrs)*
        #[allow(unused_variables, unused_mut)]
        #vis #single {
            ::core::unimplemented!()
        }
        #batch
    }
}

/// The single-key fn's signature: `Vec<K>` becomes `K`, the return type becomes
/// `Result<Option<V>, Error<E>>` or `Result<V, Error<E>>`, and the parameters lose
/// `mut` (they are only passed on).
fn single_key_signature(func: &ItemFn, signature: &Signature) -> syn::Signature {
    let mut sig = func.sig.clone();
    // A new `async` borrows the span of `fn`, so that errors about the fn's
    // future (which holds the coalescer's) land on the user's signature.
    let fn_span = sig.fn_token.span;
    sig.asyncness = Some(sig.asyncness.unwrap_or(syn::Token![async](fn_span)));
    let mut index = 0;
    for input in &mut sig.inputs {
        let FnArg::Typed(arg) = input else { continue };
        let param = &signature.params[index];
        if Some(index) == signature.key {
            if let Some(key_type) = &param.key_type {
                *arg.ty = key_type.clone();
            }
        }
        if let Pat::Ident(PatIdent {
            mutability,
            by_ref: None,
            subpat: None,
            ..
        }) = &mut *arg.pat
        {
            *mutability = None;
        }
        index += 1;
    }
    if let Some(shape) = &signature.shape {
        let value = &shape.value;
        let ok = match shape.kind {
            ShapeKind::Map | ShapeKind::PerKey => quote!(::core::option::Option<#value>),
            ShapeKind::List => value.to_token_stream(),
        };
        let error = match &shape.error {
            Some(error) => quote!(::coalesce::Error<#error>),
            None => quote!(::coalesce::Error),
        };
        let output: Type = syn::parse_quote_spanned! {shape.output.span()=>
            ::core::result::Result<#ok, #error>
        };
        sig.output = ReturnType::Type(Default::default(), Box::new(output));
    }
    sig
}

/// `load_users_batch` for `load_users`, at the span of the user's name.
fn batch_name(func: &ItemFn) -> Ident {
    let name = &func.sig.ident;
    format_ident!("{}_batch", name, span = name.span())
}

/// The fn as written, renamed `<name>_batch`, with its docs, `cfg` and lint
/// attributes, and a line pointing to the single-key fn.
fn batch_fn(func: &ItemFn) -> ItemFn {
    let mut batch = func.clone();
    batch.sig.ident = batch_name(func);
    batch.attrs.retain(|attr| {
        ["doc", "cfg", "allow", "warn", "deny", "forbid"]
            .iter()
            .any(|name| attr.path().is_ident(name))
    });
    let has_docs = batch.attrs.iter().any(|attr| attr.path().is_ident("doc"));
    let single = func.sig.ident.unraw();
    let is_method = func
        .sig
        .inputs
        .first()
        .is_some_and(|input| matches!(input, FnArg::Receiver(_)));
    let link = if is_method {
        format!("Self::{single}")
    } else {
        single.to_string()
    };
    if has_docs {
        batch.attrs.push(syn::parse_quote!(#[doc = ""]));
    }
    let line = format!(
        " Batch form of [`{single}`]({link}), which coalesces concurrent single-key calls \
         into calls of this fn."
    );
    let doc: Attribute = syn::parse_quote!(#[doc = #line]);
    batch.attrs.push(doc);
    // The coalescer needs a future even from a batch fn that never awaits.
    batch
        .attrs
        .push(syn::parse_quote!(#[allow(clippy::unused_async)]));
    batch
}
