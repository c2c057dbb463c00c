//! TLS for the simulator: a throw-away CA and a leaf certificate for the loopback names, like the
//! private-CA certificates real gateways commonly present (notes §8), so clients are tested with
//! verification *on* against a custom CA.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A fresh CA and the server certificate it signed.
pub(crate) struct SimCerts {
    pub ca_pem: String,
    /// The leaf, for a push-mode receiver on loopback that the simulator then trusts.
    pub leaf_pem: String,
    pub leaf_key_pem: zeroize::Zeroizing<String>,
    leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
}

impl SimCerts {
    /// Generates the CA and the leaf certificate (new keys on every start).
    pub fn generate() -> io::Result<SimCerts> {
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(io::Error::other)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ccgw-sim test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(io::Error::other)?;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(io::Error::other)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let mut leaf_params = CertificateParams::new(names).map_err(io::Error::other)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "ccgw-sim AgentGateway");
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().map_err(io::Error::other)?;
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .map_err(io::Error::other)?;
        Ok(SimCerts {
            ca_pem: ca_cert.pem(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: zeroize::Zeroizing::new(leaf_key.serialize_pem()),
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
        })
    }
}

/// A TLS acceptor offering TLS 1.2 and 1.3 and ALPN `h2`, `http/1.1`.
pub(crate) fn acceptor(certs: &SimCerts) -> io::Result<TlsAcceptor> {
    // Explicit provider: the process may have both ring and aws-lc-rs compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certs.leaf_key_der.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![certs.leaf_der.clone()], key)
        .map_err(io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Writes the CA PEM to a file of its own in the temp directory (removed when the simulator is
/// dropped), for clients configured by path.
pub(crate) fn write_ca_file(ca_pem: &str, port: u16) -> io::Result<PathBuf> {
    let name = format!(
        "ccgw-sim-ca-{}-{port}-{:016x}.pem",
        std::process::id(),
        fastrand::u64(..)
    );
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, ca_pem)?;
    Ok(path)
}
