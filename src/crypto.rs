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

/// A salted SHA-256 of `parts`: for telling whether a secret equals one seen before without
/// keeping the secret. Each part is hashed on its own first (on the stack: no heap block ever
/// holds the secret), so parts are fixed-length in the salted hash and no two inputs share an
/// encoding. SHA-256 and the random salt come from the ring provider rustls already brings (no
/// crypto crate of our own). A fast hash, not a password-storage KDF: it keeps the secret out
/// of memory, it does not make a weak password expensive to guess from a memory dump.
pub fn salted_sha256(salt: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let rustls::SupportedCipherSuite::Tls13(suite) =
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
    else {
        unreachable!("a TLS 1.3 suite")
    };
    let sha256 = suite.common.hash_provider;
    let mut context = sha256.start();
    context.update(salt);
    for part in parts {
        context.update(sha256.hash(part).as_ref());
    }
    context.finish().as_ref().to_vec()
}

/// A fresh random salt from the ring provider's secure generator.
pub fn random_salt() -> [u8; 16] {
    let mut salt = [0u8; 16];
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut salt)
        .is_err()
    {
        // The OS generator failed: a salt only has to differ per process and secret.
        salt = fastrand::u128(..).to_be_bytes();
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_digests_differ_by_salt_and_by_how_parts_split() {
        let salt = random_salt();
        let digest = salted_sha256(&salt, &[b"pw", b"88001"]);
        assert_eq!(digest.len(), 32);
        assert_eq!(digest, salted_sha256(&salt, &[b"pw", b"88001"]));
        assert_ne!(digest, salted_sha256(&salt, &[b"pw8", b"8001"]));
        assert_ne!(digest, salted_sha256(&random_salt(), &[b"pw", b"88001"]));
    }
}
