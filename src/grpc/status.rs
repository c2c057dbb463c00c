//! The one table from bridge and gateway failures to gRPC statuses (design §3, docs/errors.md).
//!
//! Every non-OK status carries a `google.rpc.ErrorInfo` with a stable UPPER_SNAKE `reason`:
//! domain `ccgateway` for the gateway's retcodes (metadata `retcode`, `gateway_message`),
//! domain `ccgw-bridge` for what the bridge itself decided.

use super::validate::Violations;
use crate::gateway::retcodes::{self, Class};
use crate::gateway::GatewayError;
use crate::session::SessionError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Domain of statuses caused by a gateway retcode.
pub const GATEWAY_DOMAIN: &str = "ccgateway";
/// Domain of statuses the bridge decides itself.
pub const BRIDGE_DOMAIN: &str = "ccgw-bridge";

/// A status with an `ErrorInfo` detail.
pub fn with_info(
    code: Code,
    message: impl Into<String>,
    domain: &str,
    reason: &str,
    metadata: &[(&str, String)],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, domain, metadata),
    )
}

fn class_code(class: Class) -> Code {
    match class {
        Class::InvalidArgument => Code::InvalidArgument,
        Class::FailedPrecondition => Code::FailedPrecondition,
        Class::AlreadyExists => Code::AlreadyExists,
        Class::Unauthenticated => Code::Unauthenticated,
        Class::PermissionDenied => Code::PermissionDenied,
        Class::Aborted => Code::Aborted,
        Class::Unavailable => Code::Unavailable,
    }
}

/// Maps a gateway failure (after the session layer's retry) onto a status.
pub fn gateway_status(err: &GatewayError) -> Status {
    let b = |code, reason: &str, extra: &[(&str, String)]| {
        with_info(code, err.to_string(), BRIDGE_DOMAIN, reason, extra)
    };
    match err {
        GatewayError::Retcode { retcode, message } => {
            let (code, reason) = match retcodes::lookup(retcode) {
                Some((_, reason, class)) => (class_code(class), reason),
                None => (Code::Unknown, "UNKNOWN_RETCODE"),
            };
            with_info(
                code,
                format!("gateway refused the operation: retcode {retcode} ({reason})"),
                GATEWAY_DOMAIN,
                reason,
                &[
                    ("retcode", retcode.clone()),
                    ("gateway_message", message.clone()),
                ],
            )
        }
        GatewayError::Unreachable(cause) => match crate::readiness::hint_for(cause) {
            // A likely configuration mistake: the caller (often the operator trying the
            // bridge out) hears the fix too, not only the readiness log.
            Some(hint) => with_info(
                Code::Unavailable,
                format!("{err} (hint: {hint})"),
                BRIDGE_DOMAIN,
                "GATEWAY_UNREACHABLE",
                &[],
            ),
            None => b(Code::Unavailable, "GATEWAY_UNREACHABLE", &[]),
        },
        GatewayError::HttpStatus(status) => {
            // 429 and 503 say the request was not processed. A 502 or 504 from a proxy may
            // come after the gateway acted (the answer was bad or late), so it is UNKNOWN
            // like any other 5xx: UNAVAILABLE would invite a retry that plays twice.
            let code = match status {
                429 | 503 => Code::Unavailable,
                500..=599 => Code::Unknown,
                _ => Code::FailedPrecondition,
            };
            b(
                code,
                "GATEWAY_HTTP_STATUS",
                &[("http_status", status.to_string())],
            )
        }
        GatewayError::Timeout(_) => b(Code::DeadlineExceeded, "GATEWAY_TIMEOUT", &[]),
        GatewayError::DeadlineTooShort(_) => b(Code::DeadlineExceeded, "DEADLINE_TOO_SHORT", &[]),
        GatewayError::OutcomeUnknown(_) => outcome_unknown(err.to_string()),
    }
}

/// The request may have reached the gateway (which may have acted on it), but the bridge will
/// not learn the outcome: UNKNOWN `OUTCOME_UNKNOWN`, never UNAVAILABLE, because a retry could
/// do the work twice (e.g. play a recording twice).
pub fn outcome_unknown(message: impl Into<String>) -> Status {
    with_info(
        Code::Unknown,
        message,
        BRIDGE_DOMAIN,
        "OUTCOME_UNKNOWN",
        &[],
    )
}

impl From<SessionError> for Status {
    fn from(err: SessionError) -> Self {
        match &err {
            SessionError::NotSignedIn { agent_id } => with_info(
                Code::FailedPrecondition,
                err.to_string(),
                BRIDGE_DOMAIN,
                "AGENT_NOT_SIGNED_IN",
                &[("agent_id", agent_id.clone())],
            ),
            SessionError::CredentialsMismatch { agent_id } => with_info(
                Code::AlreadyExists,
                err.to_string(),
                BRIDGE_DOMAIN,
                "AGENT_HELD_WITH_OTHER_CREDENTIALS",
                &[("agent_id", agent_id.clone())],
            ),
            SessionError::NotOwned { agent_id, owner } => with_info(
                Code::FailedPrecondition,
                err.to_string(),
                BRIDGE_DOMAIN,
                "AGENT_NOT_OWNED",
                &[("agent_id", agent_id.clone()), ("owner", owner.clone())],
            ),
            SessionError::PoolUnsure {
                agent_id, reason, ..
            } => with_info(
                Code::Unavailable,
                err.to_string(),
                BRIDGE_DOMAIN,
                reason,
                &[("agent_id", agent_id.clone())],
            ),
            SessionError::ShuttingDown => with_info(
                Code::Unavailable,
                err.to_string(),
                BRIDGE_DOMAIN,
                "SHUTTING_DOWN",
                &[],
            ),
            SessionError::CallBudgetExceeded { .. } => with_info(
                Code::DeadlineExceeded,
                err.to_string(),
                BRIDGE_DOMAIN,
                "CALL_BUDGET_EXCEEDED",
                &[],
            ),
            SessionError::Gateway(g) => gateway_status(g),
        }
    }
}

/// `GetSession` for an agent the bridge does not hold (never signed in through it, or signed
/// out): there is no session to describe.
pub fn session_not_found(agent_id: &str) -> Status {
    with_info(
        Code::NotFound,
        format!(
            "this bridge holds no session for agent {agent_id} (never signed in through it, or signed out)"
        ),
        BRIDGE_DOMAIN,
        "SESSION_NOT_FOUND",
        &[("agent_id", agent_id.to_owned())],
    )
}

impl Violations {
    /// `Ok` when nothing was recorded, else one INVALID_ARGUMENT with a `BadRequest` listing
    /// the recorded violations.
    pub fn check(self) -> Result<(), Status> {
        let Some(message) = self.message() else {
            return Ok(());
        };
        let mut details = ErrorDetails::new();
        for (field, description) in self.listed {
            details.add_bad_request_violation(field, description);
        }
        Err(Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {message}"),
            details,
        ))
    }
}

pub use crate::telemetry::code_label;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::validate::MAX_LISTED_VIOLATIONS;

    #[test]
    fn every_retcode_family_maps_as_designed() {
        let cases = [
            ("000-002", Code::InvalidArgument),
            ("000-006", Code::InvalidArgument),
            ("100-001", Code::InvalidArgument),
            ("100-013", Code::InvalidArgument),
            ("100-006", Code::FailedPrecondition),
            ("000-003", Code::PermissionDenied),
            ("500-001", Code::FailedPrecondition),
            ("500-009", Code::FailedPrecondition),
            ("100-002", Code::AlreadyExists),
            ("100-004", Code::Unauthenticated),
            ("000-007", Code::Aborted),
            ("100-021", Code::Aborted),
            ("100-007", Code::Unavailable),
            ("105-005", Code::Unavailable),
            ("987-654", Code::Unknown),
        ];
        for (retcode, code) in cases {
            let s = gateway_status(&GatewayError::Retcode {
                retcode: retcode.into(),
                message: "m".into(),
            });
            assert_eq!(s.code(), code, "{retcode}");
            let info = s.get_details_error_info().expect("ErrorInfo");
            assert_eq!(info.domain, GATEWAY_DOMAIN);
            assert_eq!(info.metadata["retcode"], retcode);
            assert_eq!(info.metadata["gateway_message"], "m");
        }
    }

    #[test]
    fn violations_are_listed_up_to_the_cap_and_counted_beyond() {
        let mut v = Violations::default();
        for i in 0..20_000 {
            v.add(format!("types[{i}]"), "not a play event type");
        }
        let s = v.check().unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument);
        let listed = s.get_details_bad_request().unwrap().field_violations;
        assert_eq!(listed.len(), MAX_LISTED_VIOLATIONS);
        assert_eq!(listed[0].field, "types[0]");
        assert!(s.message().contains("19990 more"), "{}", s.message());
        assert!(s.message().len() < 1024, "{}", s.message().len());
    }

    #[test]
    fn transport_failures_say_whether_the_outcome_is_known() {
        let code = |e: GatewayError| gateway_status(&e).code();
        assert_eq!(
            code(GatewayError::Unreachable("x".into())),
            Code::Unavailable
        );
        assert_eq!(code(GatewayError::HttpStatus(503)), Code::Unavailable);
        assert_eq!(code(GatewayError::HttpStatus(429)), Code::Unavailable);
        assert_eq!(code(GatewayError::HttpStatus(500)), Code::Unknown);
        // A proxy's 502/504 may follow the gateway's work: never "retry me".
        assert_eq!(code(GatewayError::HttpStatus(502)), Code::Unknown);
        assert_eq!(code(GatewayError::HttpStatus(504)), Code::Unknown);
        assert_eq!(
            code(GatewayError::HttpStatus(404)),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(GatewayError::Timeout(std::time::Duration::from_secs(1))),
            Code::DeadlineExceeded
        );
        assert_eq!(
            code(GatewayError::OutcomeUnknown("x".into())),
            Code::Unknown
        );
    }
}
