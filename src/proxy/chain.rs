//! Reading an error's cause chain: hyper and rustls wrap the error that says what happened
//! (a TLS alert, a refused stream, our own connector's error) a few layers deep, sometimes
//! inside an `io::Error`, whose `source()` skips what it wraps.

use std::io;

/// The first `T` in `e`'s cause chain, looking inside `io::Error`s too (whose `source()` skips
/// the error they wrap).
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(t) = find_in_chain::<T>(inner) {
                return Some(t);
            }
        }
        next = e.source();
    }
    None
}

/// `e: cause: cause ...`, each distinct message once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = cause.source();
    }
    out
}
