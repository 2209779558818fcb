//! Code generation: parse → analyze → generate, or the fallback on error.
//!
//! The expansion of
//!
//! ```text
//! #[coalesce(window = "5ms")]
//! pub async fn load(ids: Vec<u64>, region: Region) -> Result<HashMap<u64, User>, DbError> { body }
//! ```
//!
//! is, in outline (paths through `::coalesce::__private` shortened, every user
//! type named as `<T as Key>::Checked` and the like so that an unmet bound is
//! reported on the user's tokens):
//!
//! ```text
//! pub async fn load(ids: u64, region: Region) -> Result<Option<User>, ::coalesce::Error<DbError>> {
//!     static __COALESCE_SLOT: Slot = Slot::new();
//!     // `Opened`, or `Closed` if a bound on the user's types does not hold
//!     ({ use Open as _, Shut as _; (&&Gate::<Read, ((Region, ()), u64, User, DbError, ())>::new()).__coalesce_gate() })
//!     .load::<Region, u64, User, DbError, _, _>(
//!         &__COALESCE_SLOT,
//!         Name::Path(concat!(module_path!(), "::", "load")),
//!         |config| config.window(Duration::from_nanos(5000000)),
//!         region,                       // the group: every extra parameter
//!         ids,
//!         move |group, keys| {
//!             let region = Clone::clone(group);
//!             async move { load_batch(keys, region).await }
//!         },
//!     )
//!     .await
//! }
//! /// (the fn's docs) Batch form of [`load`](load), ...
//! pub async fn load_batch(ids: Vec<u64>, region: Region) -> Result<HashMap<u64, User>, DbError> { body }
//! ```
//!
//! The gate is what makes an unmet bound reported once: `Closed` has the
//! methods of `Opened` without the bounds on the user's types, so that only the
//! projection that names a type reports it (see `coalesce::__private::Gate`).
//!
//! A `&self` method calls `load_for(slot, name, config, self, ...)` (or, with
//! `instance = expr`, `load_with` and the expression first in the group) with a
//! closure that receives a clone of the instance: `move |this, group, keys|
//! async move { this.load_batch(keys, ..).await }`. `self: Arc<Self>` and
//! `self: &Arc<Self>` call `load_for_arc`. A `Vec` shape wraps the result in
//! `required`.

use proc_macro2::{Delimiter, Group, Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Item, ItemFn, Pat, PatIdent, ReturnType, Type};

use crate::args::{Args, Dispatch};
use crate::error::Errors;
use crate::signature::{self, ReceiverKind, ShapeKind, Signature};

/// The whole macro: `#[coalesce(args)] item`.
pub fn coalesce(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(func)) => func,
        Ok(Item::Impl(block)) => return crate::block::expand(args, block),
        _ => {
            let mut error = syn::Error::new(
                Span::call_site(),
                "#[coalesce] goes on an `async fn` with a body that takes a `Vec<K>` of keys \
                 (or on an `impl` block, to coalesce the methods marked in it)",
            );
            if let Err(args_error) = Args::parse(args) {
                error.combine(args_error);
            }
            let error = error.to_compile_error();
            return quote!(#error #item);
        }
    };
    function(args, &func, &Site::Unknown)
}

/// Where the annotated fn stands, as far as the macro can know.
pub enum Site {
    /// `#[coalesce]` on the fn itself: a free fn, or a method (told by its
    /// receiver); an associated fn without `self` cannot be told from a free fn.
    Unknown,
    /// Inside an `impl` block marked `#[coalesce]`: the fn is an associated item
    /// of `self_ty`, and reaches its companions through `Self::`.
    Impl {
        /// The impl's self type, for the coalescer's name.
        self_ty: Box<Type>,
        /// The method's attributes written above `#[coalesce]`, other than
        /// docs, `cfg`s and lint levels: they go to the batch fn alone, as on
        /// a fn marked by itself, where rustc runs them on the fn as written
        /// before `#[coalesce]` sees it.
        above: Vec<Attribute>,
    },
}

impl Site {
    fn in_impl(&self) -> bool {
        matches!(self, Site::Impl { .. })
    }

    /// See [`Site::Impl::above`].
    fn batch_attrs(&self) -> &[Attribute] {
        match self {
            Site::Impl { above, .. } => above,
            Site::Unknown => &[],
        }
    }
}

/// `#[coalesce(args)]` on one fn.
/// `crate = "path"` from the arguments, or `::coalesce` (the arguments' errors are
/// reported by the expansion).
pub fn crate_path(args: &TokenStream) -> syn::Path {
    Args::parse(args.clone())
        .ok()
        .and_then(|args| args.krate)
        .map_or_else(|| syn::parse_quote!(::coalesce), |krate| krate.value)
}

pub fn function(args: TokenStream, func: &ItemFn, site: &Site) -> TokenStream {
    let func = func.clone();
    if signature::rewritten_by_async_trait(&func.sig) {
        // Only the one message: the fn is left as `#[async_trait]` made it.
        let mut errors = Errors::default();
        let _ = signature::analyze(&func, &[], &crate_path(&args), &mut errors);
        let error = errors.finish().err().map(|error| {
            let first = error.into_iter().next().map(|e| e.to_compile_error());
            quote!(#first)
        });
        return quote!(#error #func);
    }
    let krate = crate_path(&args);
    let mut errors = Errors::default();
    let args = errors.check(Args::parse(args));
    let context = args
        .as_ref()
        .and_then(|args| args.context.as_ref())
        .map(|context| context.value.clone())
        .unwrap_or_default();
    let signature = signature::analyze(&func, &context, &krate, &mut errors);
    for name in &context {
        let known = signature.params.iter().enumerate().any(|(index, param)| {
            Some(index) != signature.key && param.ident.as_ref() == Some(name)
        });
        if !known {
            errors.push(syn::Error::new(
                name.span(),
                format!(
                    "`context` names parameters of the fn other than its keys; there is no \
                     parameter `{name}`"
                ),
            ));
        }
    }
    match (errors.finish(), args) {
        (Ok(()), Some(args)) => expand(&func, &args, &signature, site),
        (Err(error), _) => fallback(&func, &signature, &error),
        // `check` records an error whenever it returns `None`.
        (Ok(()), None) => unreachable!(),
    }
}

/// The single-key fn and the batch fn, for a signature without problems.
fn expand(func: &ItemFn, args: &Args, signature: &Signature, site: &Site) -> TokenStream {
    // A receiver-less fn inside a marked impl reaches its companions by `Self::`.
    let qualify = |ident: &Ident| match (&signature.receiver, site.in_impl()) {
        (None, true) => quote!(Self::#ident),
        _ => ident.to_token_stream(),
    };
    let (Some((key_param, key_type)), Some(shape), Some(key)) =
        (signature.key_param(), &signature.shape, key_name(signature))
    else {
        // The analysis reports a missing key, shape or key name as an error.
        let error = syn::Error::new_spanned(&func.sig, "#[coalesce] could not read this signature");
        return fallback(func, signature, &error);
    };
    let _ = key_param;
    let is_write = shape.kind == ShapeKind::Write;
    if let (Some(merge), false) = (&args.merge, is_write) {
        let error = syn::Error::new(
            merge.span,
            "`merge` folds the writes to one key, so it goes on a write batch fn: one that \
             takes `items: Vec<(K, V)>` and returns `()`, `Result<(), E>` or a result per key",
        );
        return fallback(func, signature, &error);
    }
    if let (Some(join), true) = (&args.join_running, is_write) {
        let error = syn::Error::new(
            join.span,
            "`join_running` is for reads: a write never joins another (each is sent, in order \
             after the running write of its key); remove it",
        );
        return fallback(func, signature, &error);
    }
    if let (Some(isolate), Some(_), true) = (&args.isolate, &args.merge, is_write) {
        let error = syn::Error::new(
            isolate.span,
            "`isolate` re-sends the halves of a failed batch, and a half may have committed \
             before the batch failed: with `merge`, its folded writes (an increment, say) \
             would be applied twice. Remove `isolate`, or `merge` (last write wins is safe \
             to re-apply)",
        );
        return fallback(func, signature, &error);
    }
    if let (Some(instance), None) = (&args.instance, &signature.receiver) {
        let error = syn::Error::new(
            instance.span,
            "`instance` says what makes two instances of a method's `self` one instance; \
             this fn has no `self`. To split batches by a value, use `group = …`",
        );
        return fallback(func, signature, &error);
    }
    let (key_type, write_names) = match &signature.write {
        Some((k, _)) => (k, Some(write_param_names(signature))),
        None => (key_type, None),
    };
    let key = match &write_names {
        Some((k, _)) => k,
        None => &key,
    };
    let krate = &signature.krate;
    let private = quote!(#krate::__private);
    let value_type = &shape.value;
    let error_type = match &shape.error {
        Some(error) => error.to_token_stream(),
        None => quote!(::core::convert::Infallible),
    };
    let group_var = Ident::new("__coalesce_group", Span::mixed_site());
    let keys_var = Ident::new("__coalesce_keys", Span::mixed_site());
    let this_var = Ident::new("__coalesce_this", Span::mixed_site());

    // The group: `instance = expr`, `group = expr` and every extra parameter,
    // in that order. Calls share a batch only if all of these are equal. The
    // expressions are evaluated (and cloned: they may name a field or a
    // parameter) before the parameters are moved into the group.
    let mut parts: Vec<(TokenStream, TokenStream)> = Vec::new();
    let mut lets = Vec::new();
    for (index, arg) in [&args.instance, &args.group].into_iter().enumerate() {
        let Some(arg) = arg else { continue };
        let expr = &arg.value;
        let var = format_ident!("__coalesce_arg{}", index, span = Span::mixed_site());
        lets.push(quote_spanned!(arg.span=> let #var = ::core::clone::Clone::clone(&(#expr));));
        parts.push((quote_spanned!(arg.span=> _), var.to_token_stream()));
    }
    let mut extra_positions = Vec::new();
    // `context` parameters: an owned clone, taken before the call, that the
    // batch fn gets (by reference if the parameter is one).
    let mut contexts = Vec::new();
    for (index, param) in signature.params.iter().enumerate() {
        if Some(index) == signature.key {
            continue;
        }
        let Some(ident) = param.ident.as_ref() else {
            let error = syn::Error::new_spanned(
                &param.arg,
                "#[coalesce] needs a plain parameter name here",
            );
            return fallback(func, signature, &error);
        };
        if args.is_context(ident) {
            let var = format_ident!("__coalesce_context{}", index, span = Span::mixed_site());
            let ty = &*param.arg.ty;
            // `&T` becomes a `T::Owned` (a `PgPool`, a `String` for `&str`)
            // that the batch fn borrows; an owned `T` is cloned.
            let (owned, elem) = match ty {
                Type::Reference(reference) => {
                    let elem = &*reference.elem;
                    let owned = quote_spanned!(ty.span()=>
                        <#elem as ::std::borrow::ToOwned>::to_owned(#ident)
                    );
                    (owned, Some(elem.clone()))
                }
                _ => (
                    quote_spanned!(ty.span()=> <#ty as ::core::clone::Clone>::clone(&#ident)),
                    None,
                ),
            };
            lets.push(quote!(let #var = #owned;));
            contexts.push((index, var, elem));
            continue;
        }
        extra_positions.push((index, parts.len()));
        parts.push((
            checked(&*param.arg.ty, "Param", krate),
            ident.to_token_stream(),
        ));
    }
    // A parameter type that is not `Hash + Eq + ...` is reported on the group
    // type argument: one parameter alone is the group (no 1-tuple, whose error
    // would list every tuple impl of `Hash`); a tuple points at the parameter list.
    let parens = func.sig.paren_token.span;
    let single_part = parts.len() == 1;
    let (group_type, group_value) = match &parts[..] {
        [] => (quote!(()), quote!(())),
        [(ty, value)] => (ty.clone(), value.clone()),
        _ => {
            let types = parts.iter().map(|(ty, _)| ty);
            let values = parts.iter().map(|(_, v)| v);
            (
                quote_spanned!(parens.join()=> (#(#types,)*)),
                quote!((#(#values,)*)),
            )
        }
    };
    // The group as the gate sees it (see `gate`): each parameter's type, as a
    // list `(A, (B, ()))` of any length (a tuple is `Hash` up to 12 elements,
    // which is `load`'s to report); the type of an `instance` or `group`
    // expression is inferred later, and is left out.
    let gate_group = parts.iter().rev().fold(quote!(()), |rest, (ty, _)| {
        if ty.to_string() == "_" {
            rest
        } else {
            quote!((#ty, #rest))
        }
    });
    // The batch fn's arguments: the keys, and each extra parameter cloned from
    // the group (once per batch call: `isolate` may call it more than once).
    let mut batch_args = Vec::new();
    let mut extra_lets = Vec::new();
    let mut extras = extra_positions.iter().peekable();
    for index in 0..signature.params.len() {
        if Some(index) == signature.key {
            batch_args.push(keys_var.to_token_stream());
            continue;
        }
        if let Some((_, var, elem)) = contexts.iter().find(|(i, _, _)| *i == index) {
            let clone = format_ident!("__coalesce_extra{}", index, span = Span::mixed_site());
            match elem {
                Some(elem) => {
                    let borrow = quote!(<_ as ::core::borrow::Borrow<#elem>>::borrow);
                    extra_lets.push(quote! {
                        let #clone = <#elem as ::std::borrow::ToOwned>::to_owned(#borrow(&#var));
                    });
                    batch_args.push(quote!(#borrow(&#clone)));
                }
                None => {
                    extra_lets.push(quote!(let #clone = ::core::clone::Clone::clone(&#var);));
                    batch_args.push(clone.to_token_stream());
                }
            }
            continue;
        }
        let Some((_, part)) = extras.next() else {
            continue;
        };
        let field = if single_part {
            quote!(#group_var)
        } else {
            let i = syn::Index::from(*part);
            quote!(&#group_var.#i)
        };
        let var = format_ident!("__coalesce_extra{}", index, span = Span::mixed_site());
        extra_lets.push(quote!(let #var = ::core::clone::Clone::clone(#field);));
        batch_args.push(var.to_token_stream());
    }

    let config = config(args, krate);
    let fn_name = func.sig.ident.unraw().to_string();
    let name = match (&args.name, site) {
        (Some(name), _) => {
            let lit = &name.value;
            quote!(#private::Name::Given(#lit))
        }
        (None, _) if signature.receiver.is_some() => quote!(#private::Name::Method(#fn_name)),
        (None, Site::Impl { self_ty, .. }) if matches!(&**self_ty, Type::Path(p) if p.path.segments.iter().any(|s| !s.arguments.is_empty())) =>
        {
            // A generic self type (`Repo<T>`): named after each
            // instantiation's type, as a method is, since each has a
            // coalescer of its own.
            quote!(#private::Name::Method(#fn_name))
        }
        (None, Site::Impl { self_ty, .. }) => {
            // `Repo`, `dyn Source` (its space kept).
            let self_ty = signature::type_text(self_ty);
            quote!(#private::Name::Path(::core::concat!(
                ::core::module_path!(), "::", #self_ty, "::", #fn_name
            )))
        }
        (None, Site::Unknown) => {
            quote!(#private::Name::Path(::core::concat!(::core::module_path!(), "::", #fn_name)))
        }
    };
    let batch_name = batch_name(func);
    // Every type the user wrote is named through a projection on a private
    // trait (`<K as Key>::Checked`), spanned at the user's tokens: an unmet
    // bound is reported there, on the whole type. rustc would report it again
    // wherever generated code meets the bound: at the call of `load` (pointed
    // at the type argument, so that report merges with the first), on the
    // future `load` returns (at the call, which spans the key type, not the
    // value's) and at its `.await` (at the `await` keyword, one token where a
    // type may be several). Those would not merge, so the call goes through a
    // gate (see `gate`) that calls a stub without the bounds when one does not
    // hold.
    let key_arg = checked(key_type, "Key", krate);
    let value_arg = checked(
        value_type,
        if is_write { "Written" } else { "Value" },
        krate,
    );
    let error_arg = match &shape.error {
        Some(error) => checked(error, "BatchError", krate),
        None => error_type.clone(),
    };
    // The batch error's cause chain: how to see it as a `std::error::Error`,
    // found by autoref specialization, registered when a coalescer is made
    // (the config closure runs then: once per coalescer, so once per
    // instantiation of a generic fn, each with its own error type).
    let config = match &shape.error {
        Some(_) => {
            let base = Ident::new("__coalesce_base", Span::mixed_site());
            quote! {
                |#base: #private::Config| {
                    #[allow(unused_imports)]
                    use #private::{ViaDeref as _, ViaError as _, ViaNothing as _};
                    #private::register_source::<#error_arg>(
                        (&&&#private::Probe::<#error_arg>::new()).__coalesce_source_of(),
                    );
                    (#config)(#base)
                }
            }
        }
        None => config,
    };
    let type_args = quote!(#group_type, #key_arg, #value_arg, #error_arg);
    let gate_value = value_arg.clone();
    // The named types are bounded on the single-key fn (below); what the call
    // can still find wanting is the type of an `instance` or `group`
    // expression, so the call gets its extent.
    // A method's most likely failure is its `Self` (not `Clone`): the call is
    // spanned at the receiver, where that is reported.
    let (first, last) = [&args.instance, &args.group]
        .into_iter()
        .flatten()
        .map(|arg| token_range(&arg.value))
        .chain(signature.receiver.as_ref().map(|(r, _)| {
            let span = r.self_token.span;
            (span, span)
        }))
        .next()
        .unwrap_or_else(|| token_range(key_type));
    // A per-key map is handed to the engine as such: an `Err` entry fails only
    // its own key.
    // Any other map (`IndexMap`, `FxHashMap`, a per-key map of writes) is
    // read as entries by key.
    let per_key = match (shape.kind, shape.outer_result) {
        (ShapeKind::PerKey, true) => match (&shape.key_error, &shape.error) {
            (Some(key_error), Some(error)) => {
                let (first, last) = token_range(key_error);
                let open = quote_spanned!(first=> <);
                let rest = quote_spanned!(last=> >::Checked);
                let trait_ident = Ident::new("KeyError", first);
                let checked = quote!(#open #key_error as #private::#trait_ident<#error> #rest);
                Some(quote!(#private::per_key_into::<_, _, _, #checked, _>))
            }
            _ => Some(quote!(#private::per_key)),
        },
        (ShapeKind::PerKey, false) => Some(quote!(#private::PerKey)),
        (ShapeKind::Map, false) => Some(quote!(#private::Keyed)),
        (ShapeKind::Map, true) => Some(quote!(#private::keyed_result)),
        (ShapeKind::Write, true) if is_result(&shape.output) => {
            Some(quote!(#private::keyed_result))
        }
        (ShapeKind::Write, true) => Some(quote!(#private::Keyed)),
        // Rows as they arrive: read by the batch's driver, item by item.
        (ShapeKind::Stream, false) => Some(quote!(#private::Streamed)),
        (ShapeKind::Stream, true) => Some(quote!(#private::streamed)),
        (ShapeKind::Write | ShapeKind::List | ShapeKind::Custom, _) => None,
    };
    let finish = |call: TokenStream| match &per_key {
        Some(adapter) => quote!(#adapter(#call.await)),
        None => quote!(#call.await),
    };
    let (function, self_type, this_arg, batch_closure) = match &signature.receiver {
        None => {
            let batch = qualify(&batch_name);
            let run = finish(quote!(#batch(#(#batch_args),*)));
            (
                quote!(load),
                None,
                None,
                quote! {
                    move |#group_var, #keys_var| {
                        #(#extra_lets)*
                        async move { #run }
                    }
                },
            )
        }
        Some((receiver, kind)) => {
            let span = receiver.self_token.span;
            let this = &receiver.self_token;
            // Called by path, not by method syntax: a user trait in scope
            // with a method of the batch fn's name, taking `self` by value,
            // would be found first on the owned instance.
            let this_ref = match kind {
                ReceiverKind::Arc => quote!(#this_var),
                ReceiverKind::Ref | ReceiverKind::RefArc => quote!(&#this_var),
            };
            let run = finish(quote!(Self::#batch_name(#this_ref, #(#batch_args),*)));
            let closure = quote! {
                move |#this_var, #group_var, #keys_var| {
                    #(#extra_lets)*
                    async move { #run }
                }
            };
            let at_self = signature::path_at(krate, span);
            let instance = quote_spanned!(span=> <Self as #at_self::__private::Instance>::Checked);
            let shared = quote_spanned!(span=> <Self as #at_self::__private::Shared>::Checked);
            let (function, self_type, this_arg) = match (kind, args.instance.is_some()) {
                (ReceiverKind::Ref, false) => (quote!(load_for), instance, quote!(#this)),
                (ReceiverKind::Ref, true) => (quote!(load_with), instance, quote!(#this)),
                (ReceiverKind::Arc, false) => (quote!(load_for_arc), shared, quote!(&#this)),
                (ReceiverKind::RefArc, false) => (quote!(load_for_arc), shared, quote!(#this)),
                (ReceiverKind::Arc, true) => (
                    quote!(load_with),
                    quote_spanned!(span=> ::std::sync::Arc<#shared>),
                    quote!(&#this),
                ),
                (ReceiverKind::RefArc, true) => (
                    quote!(load_with),
                    quote_spanned!(span=> ::std::sync::Arc<#shared>),
                    quote!(#this),
                ),
            };
            (function, Some(self_type), Some(this_arg), closure)
        }
    };
    // The owner of a fn with no `self`: `Self` in an `impl` (each
    // instantiation of a generic one has its own coalescer), `()` for a free fn.
    let owner = if site.in_impl() {
        quote!(Self)
    } else {
        quote!(())
    };
    let self_arg = match &self_type {
        Some(ty) => quote!(#ty,),
        None => quote!(#owner,),
    };
    // The instance type as the gate sees it: `Clone + Send + Sync + 'static`,
    // or only `Send + Sync + 'static` behind the `Arc` of an `_arc` method.
    let gate_self = match &self_type {
        None => quote!(()),
        Some(ty) if function.to_string().ends_with("_arc") => quote!(#private::AsShared<#ty>),
        Some(ty) => quote!(#private::AsInstance<#ty>),
    };
    let this_arg = this_arg.map(|this| quote!(#this,));
    let (function, merge_arg, value_arg) = match &write_names {
        Some((_, value)) => {
            let function = Ident::new(
                &function.to_string().replacen("load", "save", 1),
                Span::call_site(),
            );
            // How the coalescer is built: with the merge fn, bisecting failed
            // batches (last write wins only), or plain.
            let merge = match (&args.merge, &args.isolate) {
                (Some(merge), _) => {
                    let path = &merge.value;
                    let (first, last) = token_range(path);
                    let call = parenthesized(last, quote!(#path));
                    quote_spanned!(first=> #private::Build::Merge(|| #private::merge::<#value_arg, _> #call))
                }
                (None, Some(isolate)) => quote_spanned!(isolate.span=>
                    #private::Build::Isolate(<#value_arg as ::core::clone::Clone>::clone)
                ),
                (None, None) => quote!(#private::Build::Plain),
            };
            (
                function.to_token_stream(),
                Some(quote!(#merge,)),
                Some(quote!(#value,)),
            )
        }
        None => (function, None, None),
    };
    let companion = |prefix: &str| {
        let ident = format_ident!("__coalesce_{}_{}", prefix, fn_name);
        match (&signature.receiver, site.in_impl()) {
            (None, false) => quote!(#ident),
            _ => quote!(Self::#ident),
        }
    };
    let slot = if is_write {
        let slot_fn = companion("slot");
        quote!(#slot_fn())
    } else {
        quote!(&__COALESCE_SLOT)
    };
    let call_args = parenthesized(
        last,
        quote! {
            #slot,
            #name,
            #config,
            #merge_arg
            #this_arg
            #group_value,
            #key,
            #value_arg
            #batch_closure,
        },
    );
    let at_first = signature::path_at(krate, first);
    let role = if is_write { "Write" } else { "Read" };
    let gate_types = quote!(#gate_group, #key_arg, #gate_value, #error_arg, #gate_self);
    let gate = gate(krate, role, gate_types, first);
    let method = Ident::new(&function.to_string(), first);
    let load = quote_spanned!(first=> #gate.#method::<#self_arg #type_args, _, _> #call_args);
    let dot = syn::Token![.](first);
    let await_kw = Ident::new("await", last);
    let awaited = quote!(#load #dot #await_kw);
    let result = match shape.kind {
        ShapeKind::Map
        | ShapeKind::PerKey
        | ShapeKind::Write
        | ShapeKind::Custom
        | ShapeKind::Stream => awaited,
        ShapeKind::List => {
            let named = self_type.clone().unwrap_or_else(|| quote!(()));
            let arg = parenthesized(last, quote!(#awaited, #name));
            quote_spanned!(first=> #at_first::__private::required::<#named, _, _> #arg)
        }
    };

    let single = single_key_signature(func, signature);
    let attrs = &func.attrs;
    let vis = &func.vis;
    let mut batch = batch_fn(func);
    batch.attrs.extend(site.batch_attrs().iter().cloned());
    // `after_writes = path::to::write_fn`: wait for the pending writes of this
    // key through that write fn's companion first.
    let after = match (&args.after_writes, is_write) {
        (None, _) => None,
        (Some(arg), false) => match settled_path(&arg.value) {
            Some(path) => Some(quote_spanned!(arg.span=> #path(&#key).await;)),
            None => {
                let error = syn::Error::new(
                    arg.span,
                    "`after_writes` names the write fn this read follows, as a path: \
                     `after_writes = save_user` or `after_writes = Self::save_user`",
                );
                return fallback(func, signature, &error);
            }
        },
        (Some(arg), true) => {
            let error = syn::Error::new(
                arg.span,
                "`after_writes` goes on a read fn: it makes the read wait for the pending \
                 writes of its key through the write fn it names",
            );
            return fallback(func, signature, &error);
        }
    };
    let (static_slot, companions) = if is_write {
        let slot_fn = format_ident!("__coalesce_slot_{}", fn_name);
        let settled_fn = format_ident!("__coalesce_settled_{}", fn_name);
        let settled_self = self_type.clone().unwrap_or_else(|| owner.clone());
        // Under the fn's own `cfg`s: two variants of one write fn under
        // exclusive `cfg`s in a marked impl (whose `cfg`s are not evaluated
        // before its macro runs) must not make two of each.
        let cfgs: Vec<_> = func
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .collect();
        let companions = quote! {
            #(#cfgs)*
            #[doc(hidden)]
            #[allow(non_snake_case, dead_code)]
            #vis fn #slot_fn() -> &'static #private::Slot {
                static __COALESCE_SLOT: #private::Slot = #private::Slot::new();
                &__COALESCE_SLOT
            }

            /// Waits until the writes to `key` accepted so far are answered
            /// (`#[coalesce(after_writes = …)]` on a read calls this).
            #(#cfgs)*
            #[doc(hidden)]
            #[allow(non_snake_case, dead_code)]
            #vis fn #settled_fn(
                key: &#key_type,
            ) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send + 'static {
                #private::settled::<#settled_self, #key_type>(#slot, key)
            }
        };
        (None, Some(companions))
    } else {
        (
            Some(quote!(static __COALESCE_SLOT: #private::Slot = #private::Slot::new();)),
            None,
        )
    };
    let body = quote_spanned! {func.sig.ident.span()=> {
        #static_slot
        #(#lets)*
        #after
        #result
    }};
    let many = if is_write {
        None
    } else {
        Some(many_fn(
            func,
            signature,
            key_type,
            &shape.value,
            &shape.error,
            shape.kind,
            &name,
            self_type.as_ref(),
            site.in_impl(),
        ))
    };
    quote! {
        #(#attrs)*
        #[allow(clippy::missing_errors_doc)]
        #vis #single #body

        #companions

        #many

        #batch
    }
}

/// `<name>_many(keys: Vec<K>, ..)`: many keys at once, each through the
/// single-key fn (so it joins the shared batches), as a map by key.
#[allow(clippy::too_many_arguments)]
fn many_fn(
    func: &ItemFn,
    signature: &Signature,
    key_type: &Type,
    value: &Type,
    error: &Option<Type>,
    kind: ShapeKind,
    name: &TokenStream,
    self_type: Option<&TokenStream>,
    in_impl: bool,
) -> TokenStream {
    let single = &func.sig.ident;
    let unraw = single.unraw();
    let mut sig = func.sig.clone();
    sig.ident = format_ident!("{}_many", unraw, span = single.span());
    sig.asyncness = Some(
        sig.asyncness
            .unwrap_or(syn::Token![async](sig.fn_token.span)),
    );
    let k = Ident::new("__coalesce_k", Span::mixed_site());
    let mut args = Vec::new();
    let mut keys = None;
    let mut index = 0;
    for input in &mut sig.inputs {
        if without_mut(input).is_none() {
            continue;
        }
        let ident = signature.params[index].ident.clone();
        if Some(index) == signature.key {
            keys = ident;
            args.push(k.to_token_stream());
        } else if let Some(ident) = ident {
            args.push(quote!(::core::clone::Clone::clone(&#ident)));
        }
        index += 1;
    }
    let Some(keys) = keys else {
        return TokenStream::new();
    };
    let krate = &signature.krate;
    let error = match error {
        Some(error) => quote!(#krate::Error<#error>),
        None => quote!(#krate::Error),
    };
    sig.output = syn::parse_quote! {
        -> ::core::result::Result<::std::collections::HashMap<#key_type, #value>, #error>
    };
    let call = match &signature.receiver {
        None if in_impl => quote!(Self::#single(#(#args),*)),
        // Resolved as an item, never as a local: a parameter named like the
        // fn (`score: u64` of `fn score`) must not shadow it.
        None => {
            let name = unraw.to_string();
            // Mixed-site hygiene (at the user's name, where errors point)
            // only where a parameter has the fn's name.
            let shadowed = signature
                .params
                .iter()
                .any(|p| p.ident.as_ref().is_some_and(|i| i.unraw() == unraw));
            let span = if shadowed {
                Span::mixed_site().located_at(single.span())
            } else {
                single.span()
            };
            let item = if single.to_string().starts_with("r#") {
                Ident::new_raw(&name, span)
            } else {
                Ident::new(&name, span)
            };
            quote!(#item(#(#args),*))
        }
        Some((_, ReceiverKind::Arc)) => {
            quote!(::core::clone::Clone::clone(&self).#single(#(#args),*))
        }
        Some(_) => quote!(self.#single(#(#args),*)),
    };
    let helper = match kind {
        ShapeKind::List => quote!(many_required),
        _ => quote!(many),
    };
    let named = self_type.cloned().unwrap_or_else(|| quote!(()));
    let krate = &signature.krate;
    let key_arg = checked(key_type, "Key", krate);
    // Spanned like the single-key fn's call: an unmet bound on the key type is
    // reported once, on the user's tokens (see `expand`).
    let (first, last) = token_range(key_type);
    let call_args = parenthesized(last, quote!(#name, #keys, |#k| #call));
    let dot = syn::Token![.](first);
    let await_kw = Ident::new("await", last);
    // `many` bounds only the key type (the value and the error are the
    // single-key fn's, which checks them; the instance type it only names).
    let gate_types = quote!((), #key_arg, (), ::core::convert::Infallible, ());
    let gate = gate(krate, "Read", gate_types, first);
    let helper = Ident::new(&helper.to_string(), first);
    let invoke = quote_spanned!(first=> #gate.#helper::<#named, #key_arg, _, _, _> #call_args #dot #await_kw);
    let link = if signature.receiver.is_some() {
        format!("Self::{unraw}")
    } else {
        unraw.to_string()
    };
    let doc = format!(
        " Many keys at once through the shared batches of [`{unraw}`]({link}): each \
         distinct key joins a batch as a call of `{unraw}` does (deduplicated against \
         concurrent callers, split at `max_batch`, counted in the metrics). Resolves \
         to the entries found, by key, or to the first error of any key."
    );
    let vis = &func.vis;
    let cfgs = func.attrs.iter().filter(|a| a.path().is_ident("cfg"));
    quote! {
        #[doc = #doc]
        #(#cfgs)*
        // It calls the single-key fn, which may be `#[deprecated]`.
        #[allow(dead_code, deprecated, clippy::missing_errors_doc)]
        #vis #sig {
            #invoke
        }
    }
}

/// `path::to::__coalesce_settled_write_fn` for `path::to::write_fn`.
fn settled_path(expr: &syn::Expr) -> Option<syn::Path> {
    let syn::Expr::Path(p) = expr else {
        return None;
    };
    if p.qself.is_some() {
        return None;
    }
    let mut path = p.path.clone();
    let last = path.segments.last_mut()?;
    last.ident = format_ident!(
        "__coalesce_settled_{}",
        last.ident.unraw(),
        span = last.ident.span()
    );
    Some(path)
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

/// `<ty as ::coalesce::__private::Trait>::Checked`, spanning the user's type
/// (see the use in `expand`).
fn checked(ty: &dyn ToTokens, trait_name: &str, krate: &syn::Path) -> TokenStream {
    let (first, last) = token_range(ty);
    let trait_ident = Ident::new(trait_name, first);
    let open = quote_spanned!(first=> <);
    let rest = quote_spanned!(last=> >::Checked);
    quote!(#open #ty as #krate::__private::#trait_ident #rest)
}

/// `({ use ..; (&&Gate::<Role, (types)>::new()).__coalesce_gate() })`, in parentheses at
/// `span`: `Opened` when the user's types meet the coalescer's bounds, `Closed`
/// (whose methods bound none of them) otherwise, so that an unmet bound is
/// reported only by the projection that names the type (see
/// `coalesce::__private::Gate`).
fn gate(krate: &syn::Path, role: &str, types: TokenStream, span: Span) -> TokenStream {
    let private = quote!(#krate::__private);
    let role = Ident::new(role, Span::call_site());
    let inner = quote! {{
        #[allow(unused_imports)]
        use #private::{Open as _, Shut as _};
        (&&#private::Gate::<#private::#role, (#types)>::new()).__coalesce_gate()
    }};
    parenthesized(span, inner)
}

/// `(tokens)`, with the parentheses at `span`.
fn parenthesized(span: Span, tokens: TokenStream) -> TokenStream {
    let mut group = Group::new(Delimiter::Parenthesis, tokens);
    group.set_span(span);
    group.into_token_stream()
}

/// The closure that sets, on the coalescer's default `Config`, the arguments the
/// user wrote; the rest keep the runtime's defaults.
fn config(args: &Args, krate: &syn::Path) -> TokenStream {
    let private = quote!(#krate::__private);
    let base = Ident::new("__coalesce_config", Span::mixed_site());
    let mut config = base.to_token_stream();
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
    if let Some(join) = &args.join_running {
        let join = join.value;
        config = quote!(#config.join_running(#join));
    }
    if let Some(per_group) = &args.max_pending_per_group {
        let n = per_group.value;
        config = quote!(#config.max_pending_per_group(#n));
    }
    if let Some(timeout) = &args.timeout {
        let nanos = timeout.value;
        config = quote!(#config.timeout(#private::Duration::from_nanos(#nanos)));
    }
    if let Some(dispatch) = &args.dispatch {
        let variant = match dispatch.value {
            Dispatch::Window => quote!(Window),
            Dispatch::Adaptive => quote!(Adaptive),
            Dispatch::Auto => quote!(Auto),
        };
        config = quote!(#config.dispatch(#private::Dispatch::#variant));
    }
    quote!(|#base: #private::Config| #config)
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

/// The single-key signature of `func` under the attribute arguments `args`
/// (whose errors the expansion of `func` itself reports).
pub fn single_key_signature_of(args: &TokenStream, func: &ItemFn) -> syn::Signature {
    let context = Args::parse(args.clone())
        .ok()
        .and_then(|args| args.context)
        .map(|context| context.value)
        .unwrap_or_default();
    let signature = signature::analyze(func, &context, &crate_path(args), &mut Errors::default());
    let mut sig = single_key_signature(func, &signature);
    sig.constness = None;
    sig.abi = None;
    sig
}

/// The single-key fn's signature: `Vec<K>` becomes `K`, the return type becomes
/// `Result<Option<V>, Error<E>>` or `Result<V, Error<E>>`, and the parameters lose
/// `mut` (they are only passed on).
/// A parameter of a generated fn that only passes it on: its `mut` is the
/// batch fn's binding, not this fn's (`mut ids`, `mut self: Arc<Self>`).
/// Returns the typed parameter, or `None` for the receiver.
fn without_mut(input: &mut FnArg) -> Option<&mut syn::PatType> {
    match input {
        FnArg::Receiver(receiver) => {
            if receiver.reference.is_none() {
                receiver.mutability = None;
            }
            None
        }
        FnArg::Typed(arg) => {
            if let Pat::Ident(PatIdent {
                mutability,
                by_ref: None,
                subpat: None,
                ..
            }) = &mut *arg.pat
            {
                *mutability = None;
            }
            Some(arg)
        }
    }
}

fn single_key_signature(func: &ItemFn, signature: &Signature) -> syn::Signature {
    let mut sig = func.sig.clone();
    // A new `async` borrows the span of `fn`, so that errors about the fn's
    // future (which holds the coalescer's) land on the user's signature.
    let fn_span = sig.fn_token.span;
    sig.asyncness = Some(sig.asyncness.unwrap_or(syn::Token![async](fn_span)));
    let mut index = 0;
    for input in &mut sig.inputs {
        let Some(arg) = without_mut(input) else {
            continue;
        };
        let param = &signature.params[index];
        if Some(index) == signature.key {
            if let Some(key_type) = &param.key_type {
                *arg.ty = key_type.clone();
            }
            if let (Pat::Ident(pat), Some(name)) = (&mut *arg.pat, key_name(signature)) {
                pat.ident = name;
            }
        }
        index += 1;
    }
    if let (Some((k, w)), Some(key)) = (&signature.write, signature.key) {
        // `items: Vec<(K, W)>` becomes `key: K, value: W`.
        let (key_name, value_name) = write_param_names(signature);
        let (inputs, mut typed) = (std::mem::take(&mut sig.inputs), 0);
        for input in inputs {
            let FnArg::Typed(arg) = &input else {
                sig.inputs.push(input);
                continue;
            };
            if typed == key {
                let span = arg.ty.span();
                sig.inputs
                    .push(syn::parse_quote_spanned!(span=> #key_name: #k));
                sig.inputs
                    .push(syn::parse_quote_spanned!(span=> #value_name: #w));
            } else {
                sig.inputs.push(input.clone());
            }
            typed += 1;
        }
    }
    if let Some(shape) = &signature.shape {
        let value = &shape.value;
        let ok = match shape.kind {
            ShapeKind::Map | ShapeKind::PerKey | ShapeKind::Custom | ShapeKind::Stream => {
                quote!(::core::option::Option<#value>)
            }
            ShapeKind::List => value.to_token_stream(),
            ShapeKind::Write => quote!(()),
        };
        let krate = &signature.krate;
        let error = match &shape.error {
            Some(error) => quote!(#krate::Error<#error>),
            None => quote!(#krate::Error),
        };
        let output: Type = syn::parse_quote_spanned! {shape.output.span()=>
            ::core::result::Result<#ok, #error>
        };
        sig.output = ReturnType::Type(Default::default(), Box::new(output));
    }
    sig
}

/// The single-key write fn's parameter names: `key` and `value`, unless another
/// parameter has one of these names.
/// The single-key fn's name for the key parameter: the batch fn's plural name
/// made singular (`ids` → `id`, `user_ids` → `user_id`, `entries` → `entry`), so
/// that rustdoc shows `get_user(&self, id: i64)`. The name is kept when it does
/// not read as a plural, or when its singular is a keyword or another parameter.
pub(crate) fn key_name(signature: &Signature) -> Option<Ident> {
    let (param, _) = signature.key_param()?;
    let ident = param.ident.as_ref()?;
    let plural = ident.unraw().to_string();
    let singular = if let Some(stem) = plural.strip_suffix("ies").filter(|s| !s.is_empty()) {
        format!("{stem}y")
    } else if let Some(stem) = ["sses", "xes", "ches", "shes", "zzes"]
        .iter()
        .find_map(|suffix| plural.strip_suffix(suffix).map(|s| (s, suffix)))
        .map(|(stem, suffix)| format!("{stem}{}", &suffix[..suffix.len() - 2]))
    {
        stem
    } else if let Some(stem) = plural
        .strip_suffix('s')
        .filter(|s| !s.is_empty() && !s.ends_with('s') && !s.ends_with('_'))
    {
        stem.to_owned()
    } else {
        return Some(ident.clone());
    };
    let taken = signature
        .params
        .iter()
        .any(|p| p.ident.as_ref().is_some_and(|i| *i == singular));
    match syn::parse_str::<Ident>(&singular) {
        // `gen` is reserved from edition 2024 on.
        Ok(mut name) if !taken && singular != "self" && singular != "gen" => {
            name.set_span(ident.span());
            Some(name)
        }
        _ => Some(ident.clone()),
    }
}

fn write_param_names(signature: &Signature) -> (Ident, Ident) {
    let taken = |name: &str| {
        signature
            .params
            .iter()
            .any(|p| p.ident.as_ref().is_some_and(|i| i == name))
    };
    // `key`, else `write_key`, `write_key_2`, … : the first name no parameter
    // has.
    let pick = |name: &str| {
        let mut candidate = name.to_owned();
        let mut n = 1;
        while taken(&candidate) {
            candidate = if n == 1 {
                format!("write_{name}")
            } else {
                format!("write_{name}_{n}")
            };
            n += 1;
        }
        format_ident!("{}", candidate)
    };
    (pick("key"), pick("value"))
}

/// Whether `ty` is written as a `Result<..>` (or an alias named `Result`).
fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|last| last.ident == "Result"),
        Type::Group(group) => is_result(&group.elem),
        Type::Paren(paren) => is_result(&paren.elem),
        _ => false,
    }
}

/// `load_users_batch` for `load_users`, at the span of the user's name.
fn batch_name(func: &ItemFn) -> Ident {
    let name = &func.sig.ident;
    format_ident!("{}_batch", name, span = name.span())
}

/// Attributes that go to both the single-key fn and the batch fn: docs, `cfg`s
/// and lint levels (not `expect`: the other fn may not raise the lint).
pub const SHARED_ATTRS: &[&str] = &["doc", "cfg", "allow", "warn", "deny", "forbid"];

/// Whether `attr` is named one of `names` (a one-segment path).
pub fn is_named(attr: &Attribute, names: &[&str]) -> bool {
    names.iter().any(|name| attr.path().is_ident(name))
}

/// The fn as written, renamed `<name>_batch`, with its docs, `cfg` and lint
/// attributes, and a line pointing to the single-key fn.
fn batch_fn(func: &ItemFn) -> ItemFn {
    let mut batch = func.clone();
    batch.sig.ident = batch_name(func);
    batch.attrs.retain(|attr| is_named(attr, SHARED_ATTRS));
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

#[cfg(test)]
mod tests {
    use quote::quote;

    /// `crate = "…"` leaves no path through `::coalesce` in the expansion.
    #[test]
    fn a_crate_argument_replaces_every_coalesce_path() {
        let expanded = super::coalesce(
            quote!(window = "1ms", crate = "::framework::engine"),
            quote! {
                async fn load(ids: Vec<u64>) -> Result<std::collections::HashMap<u64, u64>, String> {
                    Ok(ids.into_iter().map(|id| (id, id)).collect())
                }
            },
        )
        .to_string();
        assert!(!expanded.contains(":: coalesce ::"), "{expanded}");
        assert!(
            expanded.contains(":: framework :: engine :: __private"),
            "{expanded}"
        );
        assert!(
            expanded.contains(":: framework :: engine :: Error"),
            "{expanded}"
        );
    }

    /// `join_running` on a write fn is an error on the argument, saying to
    /// remove it; on a read fn it sets the config.
    #[test]
    fn join_running_is_for_reads() {
        let write = super::coalesce(
            quote!(join_running = false),
            quote! {
                async fn save(items: Vec<(u64, u64)>) {}
            },
        )
        .to_string();
        assert!(write.contains("compile_error"), "{write}");
        assert!(write.contains("`join_running` is for reads"), "{write}");
        let read = super::coalesce(
            quote!(join_running = false, dispatch = "auto"),
            quote! {
                async fn load(ids: Vec<u64>) -> std::collections::HashMap<u64, u64> {
                    ids.into_iter().map(|id| (id, id)).collect()
                }
            },
        )
        .to_string();
        assert!(!read.contains("compile_error"), "{read}");
        assert!(read.contains(". join_running (false)"), "{read}");
        assert!(read.contains("Dispatch :: Auto"), "{read}");
    }

    /// `impl Stream<Item = Result<(K, V), E>>`, alone or in `Result<_, E>`:
    /// the single-key fn answers `Option<V>`, through `Streamed`/`streamed`.
    #[test]
    fn a_stream_of_rows_is_a_shape() {
        let alone = super::coalesce(
            quote!(),
            quote! {
                async fn rows(ids: Vec<u64>) -> impl Stream<Item = Result<(u64, String), DbError>> {
                    todo()
                }
            },
        )
        .to_string();
        assert!(!alone.contains("compile_error"), "{alone}");
        assert!(alone.contains("__private :: Streamed"), "{alone}");
        let in_result = super::coalesce(
            quote!(),
            quote! {
                async fn rows(ids: Vec<u64>) -> Result<impl futures::Stream<Item = Result<(u64, String), DbError>>, DbError> {
                    todo()
                }
            },
        )
        .to_string();
        assert!(!in_result.contains("compile_error"), "{in_result}");
        assert!(in_result.contains("__private :: streamed"), "{in_result}");
    }
}
