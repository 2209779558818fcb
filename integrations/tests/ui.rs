//! Compile-time behaviour of `#[coalesce]`: what expands and runs (`tests/ui/pass`)
//! and what is rejected, with which message on which tokens (`tests/ui/fail`).
//!
//! The `.stderr` files are rustc's output with the toolchain pinned in
//! `rust-toolchain.toml`. After changing a message, regenerate them with
//! `TRYBUILD=overwrite cargo test --test ui` and read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
