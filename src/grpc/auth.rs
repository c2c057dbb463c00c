//! Optional caller authentication by static bearer token, for deployments where the bridge is
//! not a pod-local sidecar (then also use `--tls-cert`/`--tls-client-ca`).

use super::status::{with_info, BRIDGE_DOMAIN};
use std::sync::Arc;
use tonic::{Code, Request, Status};

/// Checks `authorization: Bearer <token>` on every API call when a token is configured.
#[derive(Clone, Default)]
pub struct TokenCheck(Option<Arc<[u8]>>);

impl TokenCheck {
    /// `None` lets every call through (the loopback sidecar default).
    pub fn new(token: Option<Vec<u8>>) -> Self {
        Self(token.map(Arc::from))
    }
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TokenCheck(<redacted>)"
        } else {
            "TokenCheck(off)"
        })
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `authorization` value with the Bearer scheme: the scheme is
/// case-insensitive and followed by one or more spaces (RFC 7235 §2.1, RFC 6750 §2.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        match presented {
            Some(token) if same(token.as_bytes(), expected) => Ok(request),
            Some(_) => Err(with_info(
                Code::Unauthenticated,
                "the bearer token is not valid for this bridge",
                BRIDGE_DOMAIN,
                "INVALID_TOKEN",
                &[],
            )),
            None => Err(with_info(
                Code::Unauthenticated,
                "this bridge requires `authorization: Bearer <token>` metadata",
                BRIDGE_DOMAIN,
                "MISSING_TOKEN",
                &[],
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(check: &mut TokenCheck, header: Option<&str>) -> Result<(), Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        check.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn tokens() {
        let mut off = TokenCheck::new(None);
        assert_eq!(call(&mut off, None), Ok(()));
        let mut on = TokenCheck::new(Some(b"s3cr3t".to_vec()));
        assert_eq!(call(&mut on, Some("Bearer s3cr3t")), Ok(()));
        // The scheme is case-insensitive (RFC 7235).
        assert_eq!(call(&mut on, Some("bearer s3cr3t")), Ok(()));
        assert_eq!(call(&mut on, Some("BEARER  s3cr3t")), Ok(()));
        assert_eq!(
            call(&mut on, Some("Basic s3cr3t")),
            Err(Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut on, Some("Bearer s3cr3")),
            Err(Code::Unauthenticated)
        );
        assert_eq!(call(&mut on, Some("s3cr3t")), Err(Code::Unauthenticated));
        assert_eq!(call(&mut on, None), Err(Code::Unauthenticated));
        assert!(!format!("{on:?}").contains("s3cr3t"));
    }
}
