//! The attribute's arguments: `#[coalesce(window = "5ms", max_batch = 1000, ...)]`.
//!
//! Every value is parsed and range-checked as soon as it is read, and kept with
//! the span of its tokens so that a problem found later still points at them.
//! Parsing goes on after a bad argument, so one compile reports all of them.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse as _, ParseStream, Parser};
use syn::spanned::Spanned as _;
use syn::{Expr, Lit, LitStr, Token};

use crate::error::Errors;

/// The argument names, so that `lookahead1` writes "expected one of ..." itself.
mod kw {
    syn::custom_keyword!(window);
    syn::custom_keyword!(max_batch);
    syn::custom_keyword!(max_in_flight);
    syn::custom_keyword!(isolate);
    syn::custom_keyword!(max_pending);
    syn::custom_keyword!(max_pending_per_group);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(group);
    syn::custom_keyword!(instance);
    syn::custom_keyword!(name);
    syn::custom_keyword!(dispatch);
    syn::custom_keyword!(merge);
    syn::custom_keyword!(after_writes);
    syn::custom_keyword!(context);
    syn::custom_keyword!(join_running);
}

/// A value together with the span of the tokens it was read from.
#[derive(Clone, Debug)]
pub struct Spanned<T> {
    /// The parsed value.
    pub value: T,
    /// Where the value was written (the literal or expression).
    pub span: Span,
}

/// The dispatch policies a coalescer can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Every batch waits for its window (or for `max_batch` keys).
    Window,
    /// A call goes at once when nothing is in flight; arrivals gather while batches run.
    Adaptive,
    /// Lanes and window set by the coalescer from what it measures.
    Auto,
}

/// The parsed attribute arguments. `None` means "not written": the runtime's default applies.
#[derive(Default)]
pub struct Args {
    /// `window = "5ms"`, in nanoseconds.
    pub window: Option<Spanned<u64>>,
    /// `max_batch = N`, greater than zero.
    pub max_batch: Option<Spanned<usize>>,
    /// `max_in_flight = N`, greater than zero.
    pub max_in_flight: Option<Spanned<usize>>,
    /// `isolate = N`: levels of bisection of a failed batch, greater than zero.
    pub isolate: Option<Spanned<usize>>,
    /// `max_pending = N`, greater than zero.
    pub max_pending: Option<Spanned<usize>>,
    /// `max_pending_per_group = N`, greater than zero.
    pub max_pending_per_group: Option<Spanned<usize>>,
    /// `timeout = "2s"`, in nanoseconds, greater than zero.
    pub timeout: Option<Spanned<u64>>,
    /// `group = <expr>`, evaluated on every call.
    pub group: Option<Spanned<Expr>>,
    /// `instance = <expr>`: what makes two instances one for coalescing.
    pub instance: Option<Spanned<Expr>>,
    /// `name = "users.load"`, the coalescer's name in metrics.
    pub name: Option<Spanned<LitStr>>,
    /// `dispatch = "window" | "adaptive" | "auto"`.
    pub dispatch: Option<Spanned<Dispatch>>,
    /// `merge = path::to::fn`: how writes to one key fold (write fns only).
    pub merge: Option<Spanned<Expr>>,
    /// `after_writes = path::to::write_fn`: a read waits for the pending
    /// writes of its key through that write fn first.
    pub after_writes: Option<Spanned<Expr>>,
    /// `context = pool` or `context = (pool, http)`: parameters that do not
    /// split batches; the batch runs with the opening call's (cloned) values.
    pub context: Option<Spanned<Vec<syn::Ident>>>,
    /// `join_running = false`: a call never waits for a running batch that
    /// fetches its key (reads only).
    pub join_running: Option<Spanned<bool>>,
    /// `crate = "path::to::coalesce"`: where the expansion finds the `coalesce`
    /// crate, for a crate that re-exports the attribute.
    pub krate: Option<Spanned<syn::Path>>,
}

impl Args {
    /// Whether `name` is one of the `context` parameters.
    pub fn is_context(&self, name: &syn::Ident) -> bool {
        self.context
            .as_ref()
            .is_some_and(|context| context.value.iter().any(|c| c == name))
    }
}

impl Args {
    /// Parses the tokens inside `#[coalesce(...)]`, reporting every bad argument at once.
    pub fn parse(tokens: TokenStream) -> syn::Result<Args> {
        let parser = |input: ParseStream| {
            let mut args = Args::default();
            let mut errors = Errors::default();
            while !input.is_empty() {
                if let Err(error) = args.parse_one(input, &mut errors) {
                    errors.push(error);
                    skip_to_comma(input);
                }
                if input.is_empty() {
                    break;
                }
                if let Err(error) = input.parse::<Token![,]>() {
                    errors.push(error);
                    skip_to_comma(input);
                    let _ = input.parse::<Option<Token![,]>>();
                }
            }
            errors.finish()?;
            Ok(args)
        };
        parser.parse2(tokens)
    }

    /// Parses one `name = value` pair. A repeated name is recorded in `errors`;
    /// a malformed pair is returned as the error.
    fn parse_one(&mut self, input: ParseStream, errors: &mut Errors) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        let args = self;
        // One arm per argument, in the order "expected one of ..." lists them.
        macro_rules! arg {
            ($name:ident, $value:expr) => {
                if lookahead.peek(kw::$name) {
                    let key = input.parse::<kw::$name>()?;
                    let value = $value;
                    set(&mut args.$name, value, key.span, stringify!($name), errors);
                    return Ok(());
                }
            };
        }
        arg!(window, parse_duration_arg(input, "window", true)?);
        arg!(max_batch, parse_count_arg(input, "max_batch")?);
        arg!(max_in_flight, parse_count_arg(input, "max_in_flight")?);
        arg!(isolate, parse_count_arg(input, "isolate")?);
        arg!(
            max_pending_per_group,
            parse_count_arg(input, "max_pending_per_group")?
        );
        arg!(max_pending, parse_count_arg(input, "max_pending")?);
        arg!(timeout, parse_duration_arg(input, "timeout", false)?);
        arg!(group, parse_expr_arg(input)?);
        arg!(instance, parse_expr_arg(input)?);
        arg!(merge, parse_expr_arg(input)?);
        arg!(after_writes, parse_expr_arg(input)?);
        arg!(context, parse_names_arg(input)?);
        arg!(join_running, parse_bool_arg(input, "join_running")?);
        if lookahead.peek(Token![crate]) {
            let key = input.parse::<Token![crate]>()?;
            let value = parse_crate_arg(input)?;
            set(&mut args.krate, value, key.span, "crate", errors);
            return Ok(());
        }
        arg!(name, parse_name_arg(input)?);
        arg!(dispatch, parse_dispatch_arg(input)?);
        Err(lookahead.error())
    }
}

/// Stores an argument, or reports it as given twice (at the second occurrence).
fn set<T>(
    slot: &mut Option<Spanned<T>>,
    value: Spanned<T>,
    key: Span,
    name: &str,
    errors: &mut Errors,
) {
    if slot.is_some() {
        errors.push(syn::Error::new(
            key,
            format!("`{name}` is given more than once; keep one `{name} = ...`"),
        ));
    } else {
        *slot = Some(value);
    }
}

/// `= <expr>`: an expression, evaluated on every call.
fn parse_expr_arg(input: ParseStream) -> syn::Result<Spanned<Expr>> {
    input.parse::<Token![=]>()?;
    let expr = input.parse::<Expr>()?;
    Ok(Spanned {
        span: expr.span(),
        value: expr,
    })
}

/// `= "path::to::coalesce"`: a path, written as a string (serde's and tokio's
/// convention).
fn parse_crate_arg(input: ParseStream) -> syn::Result<Spanned<syn::Path>> {
    let expected = "`crate` takes the path of the `coalesce` crate as a string, e.g. \
                    `crate = \"my_framework::coalesce\"`";
    let lit = parse_str_arg(input, || expected.to_owned())?;
    let path = lit
        .parse::<syn::Path>()
        .map_err(|_| syn::Error::new(lit.span(), expected))?;
    Ok(Spanned {
        value: path,
        span: lit.span(),
    })
}

/// `= true` or `= false`.
fn parse_bool_arg(input: ParseStream, name: &str) -> syn::Result<Spanned<bool>> {
    input.parse::<Token![=]>()?;
    let span = input.span();
    match input.parse::<syn::LitBool>() {
        Ok(lit) => Ok(Spanned {
            value: lit.value,
            span: lit.span,
        }),
        Err(_) => Err(syn::Error::new(
            span,
            format!("`{name}` takes `true` or `false`, e.g. `{name} = false`"),
        )),
    }
}

/// `= name` or `= (a, b)`: parameter names.
fn parse_names_arg(input: ParseStream) -> syn::Result<Spanned<Vec<syn::Ident>>> {
    input.parse::<Token![=]>()?;
    let span = input.span();
    let expected = |span: Span| {
        syn::Error::new(
            span,
            "`context` names parameters of the fn: `context = pool` or `context = (pool, http)`",
        )
    };
    if input.peek(syn::token::Paren) {
        let content;
        let parens = syn::parenthesized!(content in input);
        let names = content
            .parse_terminated(syn::Ident::parse, Token![,])
            .map_err(|error| expected(error.span()))?;
        if names.is_empty() {
            return Err(expected(parens.span.join()));
        }
        let names: Vec<syn::Ident> = names.into_iter().collect();
        if let Some((_, dup)) = names
            .iter()
            .enumerate()
            .find(|(i, n)| names[..*i].contains(n))
        {
            return Err(syn::Error::new(
                dup.span(),
                format!("`{dup}` is named twice in `context`"),
            ));
        }
        return Ok(Spanned {
            value: names,
            span: parens.span.join(),
        });
    }
    let name = input.parse::<syn::Ident>().map_err(|_| expected(span))?;
    Ok(Spanned {
        span: name.span(),
        value: vec![name],
    })
}

/// After a bad argument, skips its remaining tokens so the next one can be read.
fn skip_to_comma(input: ParseStream) {
    while !input.is_empty() && !input.peek(Token![,]) {
        // A token tree at a time: groups are skipped whole, so a comma inside
        // `group = (a, b)` is never taken for a separator.
        let _ = input.parse::<proc_macro2::TokenTree>();
    }
}

/// `= "5ms"`: a string literal holding a duration. `allow_zero` is false for `timeout`.
/// `= "..."`: the string literal of an argument, or `expected` on whatever stands there.
fn parse_str_arg(input: ParseStream, expected: impl FnOnce() -> String) -> syn::Result<LitStr> {
    input.parse::<Token![=]>()?;
    let span = input.span();
    match input.parse::<Lit>() {
        Ok(Lit::Str(lit)) if lit.suffix().is_empty() => Ok(lit),
        Ok(other) => Err(syn::Error::new(other.span(), expected())),
        // A path, a constant or a macro where the literal goes: say what goes
        // there, not only "expected literal".
        Err(_) => Err(syn::Error::new(span, expected())),
    }
}

fn parse_duration_arg(
    input: ParseStream,
    name: &str,
    allow_zero: bool,
) -> syn::Result<Spanned<u64>> {
    let lit = parse_str_arg(input, || {
        format!(
            "`{name}` takes a duration written as a string with a unit, \
                     e.g. `{name} = \"5ms\"` (units: ns, us, ms, s)"
        )
    })?;
    let nanos = parse_duration(&lit.value()).map_err(|msg| syn::Error::new(lit.span(), msg))?;
    if nanos == 0 && !allow_zero {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{name}` must be greater than zero; remove the argument to have none"),
        ));
    }
    Ok(Spanned {
        value: nanos,
        span: lit.span(),
    })
}

/// `= 1000`: an integer literal greater than zero.
fn parse_count_arg(input: ParseStream, name: &str) -> syn::Result<Spanned<usize>> {
    input.parse::<Token![=]>()?;
    let wrong_kind = |span: Span| {
        syn::Error::new(
            span,
            format!("`{name}` takes a whole number greater than zero, e.g. `{name} = 100`"),
        )
    };
    if input.peek(Token![-]) {
        let minus = input.parse::<Token![-]>()?;
        let number = input.parse::<Option<Lit>>().ok().flatten();
        return Err(syn::Error::new_spanned(
            quote::quote!(#minus #number),
            wrong_kind(minus.span).to_string(),
        ));
    }
    let span = input.span();
    let lit = match input.parse::<Lit>() {
        // A typed literal (`1000u8`) would be read as the number alone.
        Ok(Lit::Int(lit)) if lit.suffix().is_empty() => lit,
        Ok(other) => return Err(wrong_kind(other.span())),
        Err(_) => return Err(wrong_kind(span)),
    };
    let value = lit.base10_parse::<usize>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            format!("`{name}` is at most {} on this target", usize::MAX),
        )
    })?;
    if value == 0 {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{name}` must be greater than zero"),
        ));
    }
    Ok(Spanned {
        value,
        span: lit.span(),
    })
}

/// `= "users.load"`: a non-empty string.
fn parse_name_arg(input: ParseStream) -> syn::Result<Spanned<LitStr>> {
    let lit = parse_str_arg(input, || {
        "`name` takes a string literal, e.g. `name = \"users.load\"`".to_owned()
    })?;
    if lit.value().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            "`name` must not be empty; remove it to use the default `module::path::fn_name`",
        ));
    }
    Ok(Spanned {
        span: lit.span(),
        value: lit,
    })
}

/// `= "window"`, `= "adaptive"` or `= "auto"`.
fn parse_dispatch_arg(input: ParseStream) -> syn::Result<Spanned<Dispatch>> {
    const EXPECTED: &str = "`dispatch` is \"window\" (every batch waits for its window), \
                            \"adaptive\" (go at once while a lane is free) or \"auto\" (lanes \
                            and window tuned from what the coalescer measures)";
    let lit = parse_str_arg(input, || EXPECTED.to_owned())?;
    let value = match lit.value().as_str() {
        "window" => Dispatch::Window,
        "adaptive" => Dispatch::Adaptive,
        "auto" => Dispatch::Auto,
        _ => return Err(syn::Error::new(lit.span(), EXPECTED)),
    };
    Ok(Spanned {
        value,
        span: lit.span(),
    })
}

/// Parses `"5ms"`, `"1.5s"`, `"250 us"` into nanoseconds.
///
/// The number is a decimal without sign or exponent; the fraction is exact and
/// may not go below one nanosecond. The error says what to write instead.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    const UNITS: &str = "units: ns, us, ms, s";
    if text.trim().is_empty() {
        return Err(format!(
            "empty duration; write a number and a unit, e.g. \"5ms\" ({UNITS})"
        ));
    }
    if text.starts_with('-') {
        return Err(format!(
            "a duration cannot be negative; write e.g. \"5ms\" ({UNITS})"
        ));
    }
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_len);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!(
            "`{text}` does not start with a number; write e.g. \"5ms\" ({UNITS})"
        ));
    }
    let unit_nanos: u64 = match unit {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" => {
            return Err(format!(
                "`{text}` has no unit; write e.g. \"{number}ms\" ({UNITS})"
            ))
        }
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; write e.g. \"{number}ms\" ({UNITS})"
            ))
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || (number.contains('.') && fraction.is_empty()) {
        return Err(format!(
            "`{number}` is not a number; write e.g. \"5ms\" or \"0.5ms\" ({UNITS})"
        ));
    }
    let too_large = || format!("`{text}` is too long a duration (the most is about 584 years)");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
    // Each fraction digit is worth a tenth of the previous one; the last must be
    // a whole number of nanoseconds.
    let mut place = unit_nanos;
    for digit in fraction.bytes().map(|b| u64::from(b - b'0')) {
        if place % 10 != 0 {
            if digit != 0 {
                return Err(format!(
                    "`{text}` is finer than one nanosecond, the smallest step of a duration; \
                     round it to whole nanoseconds"
                ));
            }
            continue;
        }
        place /= 10;
        nanos = nanos.checked_add(digit * place).ok_or_else(too_large)?;
    }
    Ok(nanos)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5ms"), Ok(5_000_000));
        assert_eq!(parse_duration("0ms"), Ok(0));
        assert_eq!(parse_duration("7ns"), Ok(7));
        assert_eq!(parse_duration("250us"), Ok(250_000));
        assert_eq!(parse_duration("2s"), Ok(2_000_000_000));
        assert_eq!(parse_duration("0.5ms"), Ok(500_000));
        assert_eq!(parse_duration("1.25s"), Ok(1_250_000_000));
        assert!(parse_duration("1.5ns").is_err());
        assert!(parse_duration("1.50ns").is_err());
        assert_eq!(parse_duration("1.0ns"), Ok(1));
        assert_eq!(parse_duration("5 ms"), Ok(5_000_000));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration(".5ms").is_err());
        assert!(parse_duration("5.ms").is_err());
        assert!(parse_duration("1.2.3ms").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert_eq!(
            parse_duration("18446744073s"),
            Ok(18_446_744_073_000_000_000)
        );
        assert!(parse_duration("18446744074s").is_err());
    }
}
