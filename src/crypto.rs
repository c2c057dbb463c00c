//! The process-wide TLS crypto provider.
//!
//! A leaf module, so that the gateway client and the API listener can both install it without
//! either reaching up to the crate root.

/// Makes ring the process-wide rustls provider (idempotent). The gateway client and the API
/// listener's TLS both use the process default; with one provider compiled in, nothing can
/// disagree about which one that is.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
