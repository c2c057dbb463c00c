//! From `--addr` (any gRPC target form or a URL), `--ca-cert`/`--client-cert`/`--client-key`
//! and `--token-file` to a channel and the metadata every request carries.

use super::{CallArgs, Failure};
use std::time::Duration;
use tonic::transport::Endpoint;
use tonic::Status;

/// The URI tonic connects to for `addr`, which may be written in gRPC's name syntax (what
/// grpcio, grpc-js, grpc-go and grpc-java take: `HOST:PORT`, `dns:[//AUTHORITY/]HOST[:PORT]`,
/// `ipv4:ADDR[:PORT]`, `ipv6:[ADDR][:PORT]`) or as an `http://`/`https://` URL. Without a
/// scheme the connection uses TLS when `tls` (a CA or client certificate was given). A missing
/// port is 443, as in gRPC's name resolution.
pub fn endpoint_uri(addr: &str, tls: bool) -> Result<String, String> {
    let hint = "expected HOST:PORT (e.g. 127.0.0.1:50051), dns:///HOST:PORT or http(s)://HOST:PORT";
    let scheme = if tls { "https" } else { "http" };
    let target = addr.trim();
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        if tls && target.starts_with("http://") {
            return Err(format!(
                "{addr:?} is plaintext (http://) but a TLS option was given; use https:// or HOST:PORT"
            ));
        }
        if rest.is_empty() {
            return Err(format!("{addr:?} names no host; {hint}"));
        }
        return Ok(target.to_owned());
    }
    let host_port = if let Some(rest) = target.strip_prefix("dns:") {
        // dns://AUTHORITY/HOST:PORT names a DNS server to ask; the system resolver is used.
        match rest.strip_prefix("//") {
            Some(with_authority) => match with_authority.split_once('/') {
                Some((_, name)) => name,
                None => {
                    return Err(format!(
                        "{addr:?}: dns://AUTHORITY must be followed by /HOST:PORT; {hint}"
                    ))
                }
            },
            None => rest,
        }
    } else if let Some(rest) = target
        .strip_prefix("ipv4:")
        .or_else(|| target.strip_prefix("ipv6:"))
    {
        if rest.contains(',') {
            return Err(format!(
                "{addr:?}: one address only (this client does no load balancing)"
            ));
        }
        rest
    } else if target.contains("://") || target.starts_with("unix:") {
        return Err(format!("{addr:?}: unsupported scheme; {hint}"));
    } else {
        target
    };
    if host_port.is_empty() || host_port.contains('/') {
        return Err(format!("{addr:?} is not a gRPC target; {hint}"));
    }
    // A port is present unless the text ends in a bare host (an IPv6 literal ends in `]`).
    let has_port = match host_port.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    let uri = if has_port {
        format!("{scheme}://{host_port}")
    } else {
        format!("{scheme}://{host_port}:443")
    };
    uri.parse::<http::Uri>()
        .map_err(|e| format!("{addr:?}: {e}; {hint}"))?;
    Ok(uri)
}

/// The channel `call` uses: `--addr` in any accepted form, TLS from `--ca-cert` /
/// `--client-cert`, `--timeout` as the connect timeout. Connects on the first call, so an
/// unreachable bridge is reported like any other failed call (UNAVAILABLE, exit 1).
pub(super) fn channel(args: &CallArgs) -> Result<tonic::transport::Channel, Failure> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let tls = args.ca_cert.is_some() || args.client_cert.is_some();
    let uri = endpoint_uri(&args.addr, tls).map_err(|e| Failure::Usage(format!("--addr {e}")))?;
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Failure::Usage(format!("--addr {:?}: {e}", args.addr)))?
        .connect_timeout(args.timeout);
    if uri_is_tls(&args.addr, tls) {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
        };
        let Some(ca) = &args.ca_cert else {
            return Err(Failure::Usage(
                "a TLS bridge (https://) needs --ca-cert: the CA that signed its --tls-cert".into(),
            ));
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            config = config.identity(Identity::from_pem(
                read("--client-cert", cert)?,
                read("--client-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| Failure::Usage(format!("--ca-cert/--client-cert: {e}")))?;
    }
    Ok(endpoint.connect_lazy())
}

fn uri_is_tls(addr: &str, tls: bool) -> bool {
    addr.trim().starts_with("https://") || (tls && !addr.trim().starts_with("http://"))
}

/// The `authorization` metadata for `--token-file` (content trimmed, as the bridge reads it).
pub(super) fn bearer(
    args: &CallArgs,
) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, Failure> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let raw = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?;
    format!("Bearer {}", raw.trim())
        .parse()
        .map(Some)
        .map_err(|_| {
            Failure::Usage(format!(
                "--token-file {}: not a valid token",
                path.display()
            ))
        })
}

/// Adds the bearer token to every request of a client.
#[derive(Clone)]
pub(super) struct Token(pub(super) Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// A unary request carrying the `--timeout` deadline (sent as grpc-timeout and enforced by the
/// channel too).
pub(super) fn with_deadline<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_targets_and_urls_become_uris() {
        let ok = |addr: &str, tls: bool| endpoint_uri(addr, tls).unwrap();
        assert_eq!(ok("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(ok("127.0.0.1:50051", true), "https://127.0.0.1:50051");
        assert_eq!(ok("dns:///bridge:7", false), "http://bridge:7");
        assert_eq!(ok("dns://8.8.8.8/bridge:7", false), "http://bridge:7");
        assert_eq!(ok("dns:bridge:7", false), "http://bridge:7");
        assert_eq!(ok("ipv4:10.0.0.1:7", false), "http://10.0.0.1:7");
        assert_eq!(ok("ipv6:[::1]:7", false), "http://[::1]:7");
        assert_eq!(ok("[::1]:7", false), "http://[::1]:7");
        assert_eq!(ok("bridge", false), "http://bridge:443");
        assert_eq!(ok("[::1]", false), "http://[::1]:443");
        assert_eq!(ok("http://h:1", false), "http://h:1");
        assert_eq!(ok("https://h:1", false), "https://h:1");
        for bad in [
            "",
            "unix:/x",
            "ftp://h:1",
            "http://",
            "h:1/x",
            "ipv4:a:1,b:2",
            "dns://x",
        ] {
            assert!(endpoint_uri(bad, false).is_err(), "{bad:?}");
        }
        assert!(
            endpoint_uri("http://h:1", true).is_err(),
            "plaintext URL with TLS flags"
        );
    }
}
