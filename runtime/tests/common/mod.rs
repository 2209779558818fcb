//! What several test files share.
#![allow(dead_code)]

/// Keeps the panics the tests provoke on purpose (their messages start with,
/// or contain, "provoked") out of the output; any other panic is reported as
/// usual. Installed once per test binary.
pub fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let provoked = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|s| s.starts_with("provoked"))
                || info
                    .payload()
                    .downcast_ref::<String>()
                    .is_some_and(|s| s.contains("provoked"));
            if !provoked {
                default(info);
            }
        }));
    });
}

/// A key whose user code panics on purpose: `Clone` of 13, `Hash` of 14, and
/// `Eq` between two 15s.
#[derive(Debug)]
pub struct Touchy(pub u64);

impl Clone for Touchy {
    fn clone(&self) -> Self {
        if self.0 == 13 {
            panic!("provoked: Clone of 13");
        }
        Touchy(self.0)
    }
}

impl std::hash::Hash for Touchy {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        if self.0 == 14 {
            panic!("provoked: Hash of 14");
        }
        self.0.hash(state);
    }
}

impl PartialEq for Touchy {
    fn eq(&self, other: &Self) -> bool {
        if self.0 == 15 && other.0 == 15 {
            panic!("provoked: Eq of 15");
        }
        self.0 == other.0
    }
}

impl Eq for Touchy {}
