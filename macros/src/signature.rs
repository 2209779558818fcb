//! What the annotated fn is: its receiver, its key parameter, its other
//! parameters and the shape of what it returns.
//!
//! Every check of the user's signature lives here, and each error points at the
//! user's own tokens. The analysis keeps going after a problem and records what
//! it could still make out, so that the fallback expansion can emit a fn whose
//! signature call sites will agree with.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    FnArg, GenericArgument, GenericParam, Ident, ItemFn, Pat, PathArguments, Receiver, ReturnType,
    Type, TypePath,
};

use crate::error::Errors;

/// The annotated fn, as far as the analysis could make it out.
pub struct Signature {
    /// The receiver of a method; `None` for a free fn (or a rejected receiver).
    pub receiver: Option<(Receiver, ReceiverKind)>,
    /// The parameters after the receiver, in order.
    pub params: Vec<Param>,
    /// Index into `params` of the `Vec<K>` parameter, if there is exactly one.
    pub key: Option<usize>,
    /// What the batch fn returns, if it is one of the supported shapes.
    pub shape: Option<Shape>,
    /// For a write batch fn (`items: Vec<(K, W)>` returning `()`, `Result<(),
    /// E>` or per-key results): `(K, W)`.
    pub write: Option<(Type, Type)>,
    /// Where the expansion finds the `coalesce` crate.
    pub krate: syn::Path,
}

/// How a method receives its instance.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    /// `&self`: the batch runs with a clone of `Self`.
    Ref,
    /// `self: Arc<Self>`: the batch runs with a clone of the `Arc`.
    Arc,
    /// `self: &Arc<Self>`: likewise.
    RefArc,
}

/// One parameter other than the receiver.
pub struct Param {
    /// The parameter as written.
    pub arg: syn::PatType,
    /// Its name, if the pattern is a plain identifier (possibly `mut`).
    pub ident: Option<Ident>,
    /// For the key parameter `ids: Vec<K>`: `K`.
    pub key_type: Option<Type>,
}

/// What the batch fn returns.
pub struct Shape {
    /// A map from key to value, or a list with one value per key.
    pub kind: ShapeKind,
    /// The value type `V`.
    pub value: Type,
    /// `E` when the batch fn returns `Result<_, E>`.
    pub error: Option<Type>,
    /// The whole return type, as written.
    pub output: Type,
    /// The return type is a `Result<_, E>` around the collection.
    pub outer_result: bool,
    /// `E2` of `Result<HashMap<K, Result<V, E2>>, E>`: converted into `E`.
    pub key_error: Option<Type>,
}

/// The two ways a batch fn can hand back values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ShapeKind {
    /// `HashMap<K, V>` or `BTreeMap<K, V>`: a key may be missing (the caller gets `None`).
    Map,
    /// `Vec<V>`: one value per key, in the order of the keys.
    List,
    /// `HashMap<K, Result<V, E>>` (or `BTreeMap`): one result per key; an `Err`
    /// fails only the callers of its key.
    PerKey,
    /// A type of the user's own that implements `BatchOutput<K>`: the value and
    /// error are its associated types; a caller gets `Option<Value>`.
    Custom,
    /// `impl Stream<Item = Result<(K, V), E>>`: entries as they arrive; each
    /// caller resolves when its own comes.
    Stream,
    /// A write batch fn: `()`, `Result<(), E>`, `HashMap<K, Result<(), E>>`
    /// (or `BTreeMap`, alone or inside `Result<_, E>`); the value is `W`.
    Write,
}

impl Signature {
    /// The key parameter: its name (if plain) and its key type `K`.
    pub fn key_param(&self) -> Option<(&Param, &Type)> {
        let param = &self.params[self.key?];
        Some((param, param.key_type.as_ref()?))
    }
}

/// `krate`'s tokens, all at `span` (so that a path the expansion writes at a
/// user's token stays there, whichever crate path it names).
pub fn path_at(krate: &syn::Path, span: proc_macro2::Span) -> TokenStream {
    krate
        .to_token_stream()
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}

/// A type as the user would write it: `HashMap<u64, u64>`, not `HashMap < u64, u64 >`.
pub fn type_text(ty: &Type) -> String {
    ty.to_token_stream()
        .to_string()
        .replace(" < ", "<")
        .replace("< ", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace("& ", "&")
}

/// `T` of a return type `impl Future<Output = T>`.
fn future_output(output: &ReturnType) -> Option<&Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::ImplTrait(bounds) = ungroup(ty) else {
        return None;
    };
    bounds.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let last = bound.path.segments.last()?;
        if last.ident != "Future" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
            _ => None,
        })
    })
}

/// Whether `#[async_trait]` has already turned this `async fn` into a fn that
/// returns `Pin<Box<dyn Future ..>>`.
pub fn rewritten_by_async_trait(sig: &syn::Signature) -> bool {
    let output = sig.output.to_token_stream().to_string();
    sig.asyncness.is_none() && output.contains("Pin") && output.contains("Future")
}

/// Analyzes `func`, reporting into `errors` everything #[coalesce] cannot turn
/// into a single-key fn.
/// `krate` is where the expansion finds the `coalesce` crate (`::coalesce`, or
/// the `crate = "…"` argument).
pub fn analyze(
    func: &ItemFn,
    context: &[Ident],
    krate: &syn::Path,
    errors: &mut Errors,
) -> Signature {
    let sig = &func.sig;
    let name = &sig.ident;

    if sig.asyncness.is_none() {
        // `#[async_trait]` above `#[coalesce]` has already turned the `async fn`
        // into a fn returning `Pin<Box<dyn Future ..>>`.
        let message = if let Some(output) = future_output(&sig.output) {
            format!(
                "#[coalesce] needs an `async fn`; write `async fn {name}(..) -> {}` and move \
                 the body of its `async` block into it",
                type_text(output)
            )
        } else if rewritten_by_async_trait(sig) {
            format!(
                "#[coalesce] sees `{name}` after `#[async_trait]` rewrote it into a fn that \
                 returns a boxed future; mark the impl block `#[coalesce]` too, above \
                 `#[async_trait]`: `#[coalesce] #[async_trait] impl Trait for Type {{ \
                 #[coalesce] async fn {name}(..) }}`"
            )
        } else {
            format!("#[coalesce] needs an `async fn`; write `async fn {name}`")
        };
        errors.push(syn::Error::new_spanned(sig.fn_token, message));
    }
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new_spanned(
            constness,
            "#[coalesce] cannot be used on a `const fn`",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new_spanned(
            unsafety,
            "#[coalesce] cannot be used on an `unsafe fn`; keep the unsafe call inside the body",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "#[coalesce] cannot be used on an `extern` fn",
        ));
    }
    // Lifetime parameters are harmless (they can only reach the receiver: every
    // other type is checked to be `'static`); type and const parameters would
    // need one coalescer per instantiation.
    let generic = sig
        .generics
        .params
        .iter()
        .any(|param| !matches!(param, GenericParam::Lifetime(_)));
    if generic {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "#[coalesce] fns cannot be generic: the coalescer is one `static` shared by every \
             call, so the key, value, error and parameter types must all be concrete",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "#[coalesce] fns cannot be variadic",
        ));
    }

    let mut receiver = None;
    let mut params = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(recv) => match check_receiver(recv) {
                Ok(kind) => receiver = Some((recv.clone(), kind)),
                Err(error) => errors.push(error),
            },
            FnArg::Typed(arg) => params.push(analyze_param(arg, errors)),
        }
    }

    let key = find_key(sig, &params, errors);
    // A write batch fn: told by what it returns (nothing, or only whether it
    // committed); its `Vec` holds `(key, value)` pairs.
    let write_output = match &sig.output {
        ReturnType::Default => Some((None, false, None)),
        ReturnType::Type(_, ty) => write_output(ty),
    };
    let mut write = None;
    if let (Some(_), Some(k)) = (&write_output, key) {
        let element = params[k].key_type.as_ref();
        match element.map(ungroup) {
            Some(Type::Tuple(pair)) if pair.elems.len() == 2 => {
                write = Some((pair.elems[0].clone(), pair.elems[1].clone()));
            }
            _ => errors.push(syn::Error::new_spanned(
                &params[k].arg.ty,
                "a write batch fn (it returns `()`, `Result<(), E>` or a result per key) \
                 takes its writes as `(key, value)` pairs: `items: Vec<(K, V)>`",
            )),
        }
    }
    // Without a key parameter, the others' roles are unclear: say nothing more.
    let checked = if key.is_some() {
        params.as_slice()
    } else {
        &[]
    };
    for (index, param) in checked.iter().enumerate() {
        let what = match (&param.ident, Some(index) == key) {
            (_, true) => Role::Key,
            (Some(ident), false) if context.contains(ident) => Role::Context,
            (Some(ident), false) => Role::Param(ident.to_string()),
            (None, false) => Role::Param("_".to_owned()),
        };
        if Some(index) == key {
            if let Some((k, w)) = &write {
                check_type(k, &Role::Key, errors);
                check_type(w, &Role::Write, errors);
                continue;
            }
            if write_output.is_some() {
                continue;
            }
        }
        let ty = param.key_type.as_ref().unwrap_or(&param.arg.ty);
        if param.key_type.is_none() || Some(index) == key {
            check_type(ty, &what, errors);
        }
    }

    if let Some((mut error, per_key, output)) = write_output {
        let is_alias =
            matches!(&error, Some(Type::Path(p)) if p.path.is_ident("__coalesce_alias_error"));
        if is_alias {
            error = match (&write, &output) {
                (Some((k, _)), Some(out)) => {
                    let krate = path_at(krate, out.span());
                    Some(syn::parse_quote_spanned! {out.span()=>
                        <#out as #krate::WriteOutput<#k>>::Error
                    })
                }
                _ => None,
            };
        }
        if let Some(error) = error.as_ref().filter(|_| !is_alias) {
            check_type(error, &Role::Error, errors);
        }
        let shape = write.as_ref().map(|(_, w)| Shape {
            kind: ShapeKind::Write,
            value: w.clone(),
            error,
            output: output.unwrap_or_else(|| syn::parse_quote!(())),
            outer_result: per_key,
            key_error: None,
        });
        return Signature {
            receiver,
            params,
            key,
            shape,
            write,
            krate: krate.clone(),
        };
    }

    let shape = match &sig.output {
        ReturnType::Default => {
            errors.push(syn::Error::new_spanned(
                name,
                format!("#[coalesce] fn `{name}` must return its results: {SHAPES}"),
            ));
            None
        }
        ReturnType::Type(_, ty) => {
            let key_type = key.and_then(|k| params[k].key_type.as_ref());
            // `fn f(..) -> impl Future<Output = T>` is reported above; its `T`
            // is the shape the user meant.
            let ty = match (sig.asyncness, future_output(&sig.output)) {
                (None, Some(output)) => output,
                _ => &**ty,
            };
            errors.check(analyze_output(ty, key_type, krate))
        }
    };
    if let Some(shape) = &shape {
        check_type(&shape.value, &Role::Value, errors);
        if let Some(error) = &shape.error {
            check_type(error, &Role::Error, errors);
        }
    }

    Signature {
        receiver,
        params,
        key,
        shape,
        write: None,
        krate: krate.clone(),
    }
}

/// Whether `ty` is what a write batch fn returns: `()`, `Result<(), E>`, a
/// per-key map of `Result<(), E>`, or such a map inside `Result<_, E>`.
/// Returns the error type, whether results are per key, and the type.
fn write_output(ty: &Type) -> Option<(Option<Type>, bool, Option<Type>)> {
    let is_unit = |t: &Type| matches!(ungroup(t), Type::Tuple(t) if t.elems.is_empty());
    if is_unit(ty) {
        return Some((None, false, Some(ty.clone())));
    }
    // `HashMap<K, Result<(), E>>` or `BTreeMap<K, Result<(), E>>`: `E`.
    let per_key_error = |t: &Type| -> Option<Type> {
        let (kind, value) = collection(t)?;
        if kind != ShapeKind::Map {
            return None;
        }
        match generic_args(value, "Result")?.as_slice() {
            [ok, error] if is_unit(ok) => Some((*error).clone()),
            _ => None,
        }
    };
    if let Some(error) = per_key_error(ty) {
        return Some((Some(error), true, Some(ty.clone())));
    }
    match generic_args(ty, "Result")?.as_slice() {
        // `io::Result<()>`, `sqlx::Result<()>`: the alias fixes the error; it
        // is named through `WriteOutput` once the key type is known.
        [ok] if is_unit(ok) => {
            let alias: Type = syn::parse_quote!(__coalesce_alias_error);
            Some((Some(alias), false, Some(ty.clone())))
        }
        [ok, error] if is_unit(ok) => Some((Some((*error).clone()), false, Some(ty.clone()))),
        [ok, error] if per_key_error(ok).is_some() => {
            Some((Some((*error).clone()), true, Some(ty.clone())))
        }
        _ => None,
    }
}

/// The supported return types, for error messages.
const SHAPES: &str = "a map by key (`HashMap<K, V>`, `BTreeMap<K, V>`, `IndexMap<K, V>`, \
                      any `…Map<K, V>`), `Vec<V>` (one value per key, in order) or a type \
                      of your own that implements `coalesce::BatchOutput<K>`, either alone \
                      or inside `Result<_, E>`; or its rows as they arrive, \
                      `impl Stream<Item = Result<(K, V), E>>` (alone or inside `Result<_, E>`)";

/// The receivers a coalesced method can have: `&self`, `self: Arc<Self>` and
/// `self: &Arc<Self>`. Concurrent calls share one batch run, which can neither
/// hold `&mut self` for all of them nor consume `self`.
fn check_receiver(recv: &Receiver) -> Result<ReceiverKind, syn::Error> {
    let ty = ungroup(&recv.ty);
    match ty {
        Type::Reference(r)
            if r.mutability.is_none() && is_self(&r.elem) && recv.mutability.is_none() =>
        {
            return Ok(ReceiverKind::Ref)
        }
        Type::Reference(r) if r.mutability.is_none() && is_arc_self(&r.elem) => {
            return Ok(ReceiverKind::RefArc)
        }
        _ if is_arc_self(ty) => return Ok(ReceiverKind::Arc),
        _ => {}
    }
    let message = if recv.reference.is_some() || matches!(ty, Type::Reference(_)) {
        "#[coalesce] methods take `&self`: concurrent calls share one batch run, which \
         cannot hold `&mut self` for all of them; use `&self` (with interior mutability \
         where the batch needs it)"
    } else if recv.colon_token.is_none() || is_self(ty) {
        "#[coalesce] methods take `&self` (or `self: Arc<Self>`): one batch run serves many \
         calls, so it cannot take `self` by value"
    } else {
        "#[coalesce] methods take `&self`, `self: Arc<Self>` or `self: &Arc<Self>`; other \
         receiver types (`Box<Self>`, `Pin<&mut Self>`, ...) are not supported"
    };
    Err(syn::Error::new_spanned(recv, message))
}

/// Whether `ty` is `Arc<Self>` (under any path).
fn is_arc_self(ty: &Type) -> bool {
    matches!(generic_args(ty, "Arc").as_deref(), Some([inner]) if is_self(inner))
}

/// Whether `ty` is `Self`.
fn is_self(ty: &Type) -> bool {
    matches!(ty, Type::Path(TypePath { qself: None, path }) if path.is_ident("Self"))
}

/// Reads one parameter: its name, and `K` if it is written `Vec<K>`.
fn analyze_param(arg: &syn::PatType, errors: &mut Errors) -> Param {
    let ident = match &*arg.pat {
        Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => Some(pat.ident.clone()),
        pat => {
            errors.push(syn::Error::new_spanned(
                pat,
                "#[coalesce] passes each parameter on to the batch fn by name, so it must be \
                 a plain name such as `tenant: TenantId`; destructure it inside the body",
            ));
            None
        }
    };
    if let Some(cfg) = arg
        .attrs
        .iter()
        .find(|attr| attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr"))
    {
        errors.push(syn::Error::new_spanned(
            cfg,
            "#[coalesce] cannot take a parameter under `#[cfg]`: the single-key fn, the batch \
             call and the batch's group would each need it or not; write the fn twice, each \
             under its own `#[cfg]`, or keep the parameter and ignore it where it is unused",
        ));
    }
    Param {
        key_type: vec_element(&arg.ty).cloned(),
        arg: arg.clone(),
        ident,
    }
}

/// Picks the one `Vec<K>` parameter, or reports that there is none or more than one.
fn find_key(sig: &syn::Signature, params: &[Param], errors: &mut Errors) -> Option<usize> {
    let mut vecs = params
        .iter()
        .enumerate()
        .filter(|(_, param)| param.key_type.is_some());
    let Some((key, _)) = vecs.next() else {
        // `ids: &[u64]` or `ids: &Vec<u64>`: most likely meant as the keys.
        let borrowed = params
            .iter()
            .find_map(|param| match ungroup(&param.arg.ty) {
                Type::Reference(r) if matches!(ungroup(&r.elem), Type::Slice(_)) => Some(r),
                Type::Reference(r) if vec_element(&r.elem).is_some() => Some(r),
                _ => None,
            });
        let error = match borrowed {
            Some(reference) => syn::Error::new_spanned(
                reference,
                "#[coalesce] hands the batch fn its keys as an owned `Vec<K>`; take \
                 `Vec<K>` instead of a slice or a reference, e.g. `ids: Vec<u64>`",
            ),
            None => syn::Error::new(
                sig.paren_token.span.join(),
                "#[coalesce] needs a `Vec<K>` parameter for the keys of a batch, \
                 e.g. `ids: Vec<u64>`",
            ),
        };
        errors.push(error);
        return None;
    };
    let mut unique = true;
    for (_, extra) in vecs {
        unique = false;
        errors.push(syn::Error::new_spanned(
            &extra.arg,
            "#[coalesce] takes the keys from the one `Vec<K>` parameter, and this is a second \
             one; pass other lists in another type (e.g. `Box<[T]>` or a newtype)",
        ));
    }
    unique.then_some(key)
}

/// `K` if `ty` is `Vec<K>` (under any path, e.g. `std::vec::Vec<K>`).
fn vec_element(ty: &Type) -> Option<&Type> {
    match generic_args(ty, "Vec")?.as_slice() {
        [element] => Some(element),
        _ => None,
    }
}

/// The type arguments of `ty` if it is a path whose last segment is `name<...>`.
/// `None` for other types, or if an argument is not a type (a lifetime, a const).
fn generic_args<'a>(ty: &'a Type, name: &str) -> Option<Vec<&'a Type>> {
    let Type::Path(TypePath { qself: None, path }) = ungroup(ty) else {
        return None;
    };
    let last = path.segments.last()?;
    if last.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    args.args
        .iter()
        .map(|arg| match arg {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect()
}

/// Sees through parentheses and the invisible groups left by `macro_rules!`.
fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(group) => ty = &group.elem,
            Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// Reads the return type as one of the supported shapes.
fn analyze_output(output: &Type, key: Option<&Type>, krate: &syn::Path) -> syn::Result<Shape> {
    let unsupported = |ty: &Type| {
        syn::Error::new_spanned(
            ty,
            format!("unsupported return type for #[coalesce]; the batch fn returns {SHAPES}"),
        )
    };
    if let Some((value, error)) = stream_item(output) {
        return Ok(Shape {
            kind: ShapeKind::Stream,
            value: value.clone(),
            error: Some(error.clone()),
            output: output.clone(),
            outer_result: false,
            key_error: None,
        });
    }
    if let Some(args) = generic_args(output, "Result") {
        if let [ok, error] = args.as_slice() {
            if let Some((value, _)) = stream_item(ok) {
                // The stream's items fail with the same `E` as the whole batch.
                return Ok(Shape {
                    kind: ShapeKind::Stream,
                    value: value.clone(),
                    error: Some((*error).clone()),
                    output: output.clone(),
                    outer_result: true,
                    key_error: None,
                });
            }
        }
        // A `Result` alias with the error type fixed (`io::Result<T>`,
        // `sqlx::Result<T>`, `anyhow::Result<T>`): the error is whatever the
        // alias says, named through the `BatchOutput` impl of `Result<T, E>`.
        if let ([ok], Some(key)) = (args.as_slice(), key) {
            let (kind, value) =
                read_collection(ok, Some(key), krate).ok_or_else(|| unsupported(ok))?;
            if let Some((value, per_key_error)) = per_key_value(kind, &value) {
                return Ok(Shape {
                    kind: ShapeKind::PerKey,
                    value: value.clone(),
                    error: Some(per_key_error.clone()),
                    output: output.clone(),
                    outer_result: true,
                    key_error: None,
                });
            }
            let krate = path_at(krate, output.span());
            let error: Type = syn::parse_quote_spanned! {output.span()=>
                <#output as #krate::__private::Fallible>::Error
            };
            return Ok(Shape {
                kind,
                value,
                error: Some(error),
                output: output.clone(),
                outer_result: true,
                key_error: None,
            });
        }
        let [ok, error] = args.as_slice() else {
            return Err(syn::Error::new_spanned(
                output,
                format!(
                    "#[coalesce] cannot see the error type behind this `Result` alias; write \
                     the `Result` out in full with its error type, e.g. `Result<_, {}>`",
                    alias_error_guess(output)
                ),
            ));
        };
        let (kind, value) = read_collection(ok, key, krate).ok_or_else(|| unsupported(ok))?;
        if let Some((value, key_error)) = per_key_value(kind, &value) {
            // The per-key error converts into the batch error `E`.
            return Ok(Shape {
                kind: ShapeKind::PerKey,
                value: value.clone(),
                error: Some((*error).clone()),
                output: output.clone(),
                outer_result: true,
                key_error: Some(key_error.clone()),
            });
        }
        return Ok(Shape {
            kind,
            value,
            error: Some((*error).clone()),
            output: output.clone(),
            outer_result: true,
            key_error: None,
        });
    }
    let (kind, value) = read_collection(output, key, krate).ok_or_else(|| unsupported(output))?;
    if let Some((value, error)) = per_key_value(kind, &value) {
        return Ok(Shape {
            kind: ShapeKind::PerKey,
            value: value.clone(),
            error: Some(error.clone()),
            output: output.clone(),
            outer_result: false,
            key_error: None,
        });
    }
    // A container of the user's own: its `BatchOutput` impl names the error.
    let error = (kind == ShapeKind::Custom).then(|| -> Type {
        let krate = path_at(krate, output.span());
        syn::parse_quote_spanned! {output.span()=>
            <#output as #krate::BatchOutput<#key>>::Error
        }
    });
    Ok(Shape {
        kind,
        value,
        error,
        output: output.clone(),
        outer_result: false,
        key_error: None,
    })
}

/// What a batch fn's collection type holds: [`collection`]'s answer, or for a
/// type of the user's own (a path that is not one of std's scalars, strings,
/// pointers or sets), `Custom` with the value its `BatchOutput` impl names.
fn read_collection(ty: &Type, key: Option<&Type>, krate: &syn::Path) -> Option<(ShapeKind, Type)> {
    if let Some((kind, value)) = collection(ty) {
        return Some((kind, value.clone()));
    }
    let key = key?;
    let Type::Path(TypePath { qself: None, path }) = ungroup(ty) else {
        return None;
    };
    const NOT_CONTAINERS: &[&str] = &[
        "Option",
        "String",
        "str",
        "Box",
        "Arc",
        "Rc",
        "Cow",
        "Result",
        "HashSet",
        "BTreeSet",
        "VecDeque",
        "BinaryHeap",
        "LinkedList",
        "bool",
        "char",
        "u8",
        "u16",
        "u32",
        "u64",
        "u128",
        "usize",
        "i8",
        "i16",
        "i32",
        "i64",
        "i128",
        "isize",
        "f32",
        "f64",
    ];
    let last = path.segments.last()?;
    if NOT_CONTAINERS.iter().any(|name| last.ident == name) {
        return None;
    }
    let krate = path_at(krate, ty.span());
    let value: Type = syn::parse_quote_spanned! {ty.span()=>
        <#ty as #krate::BatchOutput<#key>>::Value
    };
    Some((ShapeKind::Custom, value))
}

/// `(V, E)` when `ty` is `impl Stream<Item = Result<(K, V), E>>` (the trait
/// under any path).
fn stream_item(ty: &Type) -> Option<(&Type, &Type)> {
    let Type::ImplTrait(imp) = ungroup(ty) else {
        return None;
    };
    imp.bounds.iter().find_map(|bound| {
        let syn::TypeParamBound::Trait(bound) = bound else {
            return None;
        };
        let last = bound.path.segments.last()?;
        if last.ident != "Stream" {
            return None;
        }
        let PathArguments::AngleBracketed(args) = &last.arguments else {
            return None;
        };
        args.args.iter().find_map(|arg| match arg {
            GenericArgument::AssocType(assoc) if assoc.ident == "Item" => {
                match generic_args(&assoc.ty, "Result")?.as_slice() {
                    [pair, error] => match ungroup(pair) {
                        Type::Tuple(t) if t.elems.len() == 2 => Some((&t.elems[1], *error)),
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        })
    })
}

/// `(V, E)` when a map's value type is `Result<V, E>`: one result per key.
fn per_key_value(kind: ShapeKind, value: &Type) -> Option<(&Type, &Type)> {
    if kind != ShapeKind::Map {
        return None;
    }
    match generic_args(value, "Result")?.as_slice() {
        [value, error] => Some((value, error)),
        _ => None,
    }
}

/// `(Map, V)` for `HashMap<K, V>` (also with a hasher) and `BTreeMap<K, V>`;
/// `(List, V)` for `Vec<V>`.
fn collection(ty: &Type) -> Option<(ShapeKind, &Type)> {
    // Any map by key: std's `HashMap` (with any hasher) and `BTreeMap`,
    // `hashbrown::HashMap`, and aliases named `…Map<K, V>` such as
    // `FxHashMap`. The expansion goes through `BatchOutput`, so a map type
    // without an impl is reported by rustc, on the return type.
    if let Type::Path(TypePath { qself: None, path }) = ungroup(ty) {
        if let Some(last) = path.segments.last() {
            if last.ident.to_string().ends_with("Map") {
                if let Some(args) = generic_args(ty, &last.ident.to_string()) {
                    if let [_, value] | [_, value, _] = args.as_slice() {
                        return Some((ShapeKind::Map, value));
                    }
                }
            }
        }
    }
    vec_element(ty).map(|value| (ShapeKind::List, value))
}

/// For `sqlx::Result<T>`, `sqlx::Error`: what such an alias usually stands for.
fn alias_error_guess(ty: &Type) -> String {
    let Type::Path(TypePath { path, .. }) = ungroup(ty) else {
        return "MyError".to_owned();
    };
    let prefix: Vec<String> = path
        .segments
        .iter()
        .rev()
        .skip(1)
        .map(|segment| segment.ident.to_string())
        .collect();
    if prefix.is_empty() {
        return "MyError".to_owned();
    }
    let mut guess: Vec<String> = prefix.into_iter().rev().collect();
    guess.push("Error".to_owned());
    guess.join("::")
}

/// Which type of the signature a check is about, for its message.
enum Role {
    Key,
    Value,
    Write,
    Error,
    Param(String),
    /// A `context` parameter: cloned for the batch, never part of its group;
    /// it may be a reference.
    Context,
}

impl Role {
    fn describe(&self) -> String {
        match self {
            Role::Key => "the key type".to_owned(),
            Role::Value => "the value type".to_owned(),
            Role::Write => "the written value's type".to_owned(),
            Role::Error => "the error type".to_owned(),
            Role::Param(name) => format!("the type of parameter `{name}`"),
            Role::Context => "the type of a `context` parameter".to_owned(),
        }
    }

    /// Why the type has to be owned.
    fn why_owned(&self) -> &'static str {
        match self {
            Role::Key => {
                "the coalescer holds keys until their batch has run; use e.g. `String` \
                 instead of `&str`"
            }
            Role::Value => "every caller gets its own clone of its value; use an owned type",
            Role::Write => {
                "the coalescer holds each write until its batch commits; use an owned type"
            }
            Role::Error => "every caller of a failed batch shares the error; use an owned type",
            Role::Param(_) => {
                "#[coalesce] clones it into the key of the batch's group and moves it into \
                 the batch call; use e.g. `String` or `Arc<T>` instead of a reference, or \
                 name it in `context = ..` if it must not split batches (a pool, a client)"
            }
            Role::Context => {
                "a `context` parameter may be `&T` (the batch runs with a clone of the `T`), \
                 but not `&mut T`: one batch serves many callers"
            }
        }
    }
}

/// Checks a type that ends up in the coalescer: it must be concrete (no `impl
/// Trait`) and `'static`. It may name `Self` (the `static` holds its coalescers
/// type-erased, one per type).
fn check_type(ty: &Type, role: &Role, errors: &mut Errors) {
    let mut finder = TypeIssues::default();
    finder.visit_type(ty);
    let what = role.describe();
    if let Some(tokens) = finder.impl_trait {
        errors.push(syn::Error::new_spanned(
            tokens,
            format!(
                "`impl Trait` cannot be used in {what} of a #[coalesce] fn: the coalescer is \
                 one `static` shared by every call, so all its types must be concrete"
            ),
        ));
    }
    // A `context` reference `&T` is cloned into an owned `T` for the batch.
    let borrowed = finder
        .borrowed
        .filter(|_| !matches!(role, Role::Context) || finder.mutable);
    if let Some(tokens) = borrowed {
        errors.push(syn::Error::new_spanned(
            tokens,
            format!("{what} must be owned (`'static`): {}", role.why_owned()),
        ));
    }
}

/// What `check_type` looks for, with the span of the first occurrence of each.
#[derive(Default)]
struct TypeIssues {
    impl_trait: Option<TokenStream>,
    borrowed: Option<TokenStream>,
    mutable: bool,
}

impl<'ast> Visit<'ast> for TypeIssues {
    fn visit_type_impl_trait(&mut self, ty: &'ast syn::TypeImplTrait) {
        self.impl_trait.get_or_insert(ty.to_token_stream());
    }

    fn visit_type_reference(&mut self, ty: &'ast syn::TypeReference) {
        let is_static = ty
            .lifetime
            .as_ref()
            .is_some_and(|lifetime| lifetime.ident == "static");
        if !is_static {
            self.borrowed.get_or_insert(ty.to_token_stream());
        }
        self.mutable |= ty.mutability.is_some();
        self.visit_type(&ty.elem);
    }

    fn visit_lifetime(&mut self, lifetime: &'ast syn::Lifetime) {
        if lifetime.ident != "static" {
            self.borrowed.get_or_insert(lifetime.to_token_stream());
        }
    }

    // Lifetimes inside `fn(&str)` and `Fn(&str)` are bound there, and leave the
    // type `'static`.
    fn visit_type_bare_fn(&mut self, _: &'ast syn::TypeBareFn) {}

    fn visit_parenthesized_generic_arguments(
        &mut self,
        _: &'ast syn::ParenthesizedGenericArguments,
    ) {
    }
}
