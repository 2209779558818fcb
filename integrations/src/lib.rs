//! Tests and examples of `coalesce`, kept out of the published crates: the
//! compile-time cases (`tests/ui`, trybuild), the attribute's behaviour in the
//! forms users write, and integrations with real services on 127.0.0.1
//! (PostgreSQL, Redis, an in-process HTTP server, Prometheus) and with `tracing`
//! and caches. Nothing here is a library: see `tests/` and `examples/`.
