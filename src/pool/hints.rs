//! etcd failures worded for an operator: one line, the cause, and what to change. The transport
//! reports a TLS refusal or a closed port as a chain of wrapped errors whose `Debug` form is all
//! `Display` shows (`hyper::Error(Io, Custom { kind: InvalidData, … })`); this walks the chain
//! for the cause it names and says which flag fixes it, as the gateway's start-up hints do.

use super::{EtcdAuth, EtcdTls, PoolError};
use etcd_client::{Client, TxnOpResponse, TxnResponse};
use rustls::{AlertDescription, CertificateError};
use std::error::Error;
use std::time::Duration;

/// What the bridge was given, to word the fix.
pub(super) struct Setup<'a> {
    pub endpoints: &'a [String],
    pub tls: Option<&'a EtcdTls>,
    pub auth: Option<&'a EtcdAuth>,
}

/// [`Setup`] owned, for the lease's keep-alive, which runs on a task of its own and outlives
/// any borrow of the backend: its failures get the same one-line hints.
#[derive(Clone)]
pub(super) struct OwnedSetup {
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    pub auth: Option<EtcdAuth>,
}

impl OwnedSetup {
    /// [`describe`] with this setup.
    pub(super) fn describe(&self, e: etcd_client::Error) -> PoolError {
        describe(e, &self.borrowed())
    }

    /// This setup as [`Setup`].
    pub(super) fn borrowed(&self) -> Setup<'_> {
        Setup {
            endpoints: &self.endpoints,
            tls: self.tls.as_ref(),
            auth: self.auth.as_ref(),
        }
    }
}

/// A failed etcd request as a [`PoolError`] whose message is one line with its fix.
pub(super) fn describe(e: etcd_client::Error, setup: &Setup) -> PoolError {
    PoolError::Coordinator(explain(&e, setup))
}

fn explain(e: &etcd_client::Error, setup: &Setup) -> String {
    let endpoints = setup.endpoints.join(",");
    if let etcd_client::Error::GRpcStatus(s) = e {
        if let Some(refusal) = auth_refusal(s, setup.auth) {
            return refusal;
        }
    }
    let chain = causes(e);
    for cause in &chain {
        if let Some(hint) = cause
            .downcast_ref::<rustls::Error>()
            .and_then(|r| tls_hint(r, setup, &endpoints))
        {
            return hint;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return format!(
                        "nothing listens at {endpoints}: check --etcd-endpoints (and that etcd runs)"
                    )
                }
                std::io::ErrorKind::TimedOut => {
                    return format!(
                        "etcd at {endpoints} did not answer in time: check --etcd-endpoints and the network path (a firewall drops the packets)"
                    )
                }
                _ => {}
            }
        }
    }
    // No known cause: the innermost error's own words, without the chain's Debug dump.
    let words = match (e, chain.last()) {
        (etcd_client::Error::GRpcStatus(s), None) => format!("{:?}: {}", s.code(), s.message()),
        (_, Some(root)) => root.to_string(),
        (_, None) => e.to_string(),
    };
    format!("etcd at {endpoints}: {words}")
}

/// `e`'s wrapped errors, outermost first; an `io::Error`'s payload counts as one of them (its
/// own `source()` skips it).
fn causes(e: &etcd_client::Error) -> Vec<&(dyn Error + 'static)> {
    let first: Option<&(dyn Error + 'static)> = match e {
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::GRpcStatus(s) => s.source(),
        etcd_client::Error::IoError(io) => Some(io),
        _ => None,
    };
    let mut out = Vec::new();
    let mut next = first;
    while let Some(cause) = next {
        out.push(cause);
        let payload = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|p| p as &(dyn Error + 'static));
        next = payload.or_else(|| cause.source());
    }
    out
}

fn tls_hint(e: &rustls::Error, setup: &Setup, endpoints: &str) -> Option<String> {
    let identity = setup.tls.is_some_and(|t| t.identity.is_some());
    Some(match e {
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown,
        ) if !identity => "etcd requires a client certificate: pass --etcd-client-cert/--etcd-client-key".into(),
        rustls::Error::AlertReceived(alert) => format!(
            "etcd refused this client's TLS ({alert:?}): --etcd-client-cert must be signed by a CA of etcd's --trusted-ca-file and allow client authentication"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "--etcd-ca-cert does not hold the CA that signed etcd's certificate (etcd at {endpoints})"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "etcd's certificate is not valid for the host of --etcd-endpoints {endpoints}: use a host name or address its certificate lists"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => format!("etcd's certificate (at {endpoints}) has expired"),
        rustls::Error::InvalidMessage(_) => format!(
            "etcd at {endpoints} does not answer TLS: use http:// endpoints without --etcd-ca-cert, or run etcd with --cert-file/--key-file"
        ),
        _ => return None,
    })
}

/// etcd refusing the credentials, or wanting some, said as such: an operator fixes the user or
/// password, not the network.
fn auth_refusal(s: &tonic::Status, auth: Option<&EtcdAuth>) -> Option<String> {
    let refused = matches!(
        s.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ) || [
        "authentication failed",
        "user name is empty",
        "invalid auth token",
    ]
    .iter()
    .any(|m| s.message().contains(m));
    let denied = s.message().contains("permission denied");
    Some(match auth {
        _ if denied => format!(
            "etcd denied this user access to --etcd-prefix ({}): grant its role readwrite on the prefix (docs/running-replicas.md, \"Securing the pool's etcd\")",
            s.message()
        ),
        Some(auth) if refused => format!(
            "etcd refused the credentials of --etcd-user {:?} (check it and --etcd-password-file): {}",
            auth.user,
            s.message()
        ),
        None if refused => format!(
            "etcd requires authentication (it runs with `auth enable`): give --etcd-user and --etcd-password-file, or a client certificate whose CN is an etcd user: {}",
            s.message()
        ),
        _ => return None,
    })
}

/// The name claim failed: another lease holds `{prefix}names/{instance}`. `claim` is the failed
/// transaction, whose else branch read the key. A lease that runs out soon is most likely this
/// instance's previous run (killed without leaving); one renewed all along, another replica.
pub(super) async fn name_taken(
    client: &mut Client,
    instance: &str,
    claim: &TxnResponse,
    bound: Duration,
) -> PoolError {
    let lease = claim.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
        _ => None,
    });
    let left = match lease.filter(|id| *id != 0) {
        Some(id) => tokio::time::timeout(bound, client.lease_time_to_live(id, None))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|r| r.ttl()),
        None => None,
    };
    PoolError::NameTaken(match left {
        Some(secs) if secs >= 0 => format!(
            "the name {instance:?} is held by a lease that ends within {} s — a previous run of this instance? Then this one joins once that lease ends. If it stays taken, another live instance holds the name: give every replica its own --instance-name",
            secs + 1
        ),
        _ => format!(
            "another live instance holds the name {instance:?} in this pool; give every replica its own --instance-name"
        ),
    })
}
