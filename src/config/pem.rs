//! PEM material named by flags, checked while the configuration is validated, before any port is
//! bound: a file without a certificate, a key that does not parse or does not belong to its
//! certificate, a CA bundle with no usable CA is a configuration error (exit 64) naming the flag
//! and the file, instead of a transport error once the listeners are up.

use super::{invalid, read, ConfigError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// Reads `path` (given as `flag`) and checks it holds at least one PEM certificate.
pub(super) fn certificates(
    path: &Path,
    flag: &str,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), ConfigError> {
    let pem = read(path, flag)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{flag} {}: unreadable PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{flag} {}: holds no PEM certificate (a -----BEGIN CERTIFICATE----- block)",
            path.display()
        )));
    }
    Ok((pem, certs))
}

/// Reads a CA bundle and checks that at least one of its certificates is usable as a trust
/// anchor.
pub(super) fn ca_bundle(path: &Path, flag: &str) -> Result<Vec<u8>, ConfigError> {
    let (pem, certs) = certificates(path, flag)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid(format!(
            "{flag} {}: none of its certificates is usable as a CA (not X.509 DER inside the PEM?)",
            path.display()
        )));
    }
    Ok(pem)
}

/// Reads a certificate (chain) and its private key and checks that they belong together.
/// Returns both PEM texts.
pub(super) fn identity(
    (cert_path, cert_flag): (&Path, &str),
    (key_path, key_flag): (&Path, &str),
) -> Result<(Vec<u8>, Vec<u8>), ConfigError> {
    let (cert_pem, certs) = certificates(cert_path, cert_flag)?;
    let key_pem = read(key_path, key_flag)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            invalid(format!(
                "{key_flag} {}: unreadable PEM: {e}",
                key_path.display()
            ))
        })?
        .ok_or_else(|| {
            invalid(format!(
                "{key_flag} {}: holds no PEM private key (a -----BEGIN … PRIVATE KEY----- block)",
                key_path.display()
            ))
        })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(format!(
            "{key_flag} {} is not the private key of the certificate in {cert_flag} {}",
            key_path.display(),
            cert_path.display()
        )),
        e => invalid(format!(
            "{key_flag} {} (for {cert_flag} {}): {e}",
            key_path.display(),
            cert_path.display()
        )),
    })?;
    Ok((cert_pem, key_pem))
}
