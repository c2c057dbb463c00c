//! Sign-in, forced sign-in, sign-out and Guid refresh (`/onlineagent/{id}...`, notes §1, §2, §6).

use std::sync::atomic::Ordering;

use http::header::{HeaderName, SET_COOKIE};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::push::PushTarget;
use super::shared::Shared;
use super::state::{Client, EndCause, NOT_SIGNED_IN};
use super::wire::{self, Reply};

/// Longest accepted `password` (characters).
const MAX_PASSWORD: usize = 32;
/// Longest accepted `phonenum` (characters).
const MAX_PHONENUM: usize = 24;

/// `PUT /onlineagent/{id}` (`force` = false) and `PUT /onlineagent/{id}/forcelogin`.
pub(crate) fn login(shared: &Shared, agent_id: &str, body: &[u8], force: bool) -> Reply {
    let Some(request) = LoginRequest::parse(body) else {
        return Reply::retcode("100-001");
    };
    if shared
        .config
        .password
        .as_deref()
        .is_some_and(|expected| expected != request.password)
    {
        return Reply::retcode("100-004");
    }
    let (guid, login_time) = match sign_in(
        shared,
        agent_id,
        request.status,
        force,
        Client::Bridge,
        request.push,
    ) {
        Ok(signed_in) => signed_in,
        Err(retcode) => return Reply::retcode(retcode),
    };
    shared.sign_ins.fetch_add(1, Ordering::Relaxed);
    let body = json!({
        "message": "",
        "retcode": "0",
        "result": {
            "vdnid": 1,
            "workno": agent_id,
            "mediatype": "TTF",
            "loginTime": login_time.to_string(),
            "isForceChange": "false",
            "serverName": "AgentGateway",
            "timeRemaining": "",
        }
    });
    Reply::json(&body)
        .with_header(
            HeaderName::from_static("set-guid"),
            wire::set_guid(&guid, shared.config.set_guid_attributes),
        )
        .with_header(SET_COOKIE, format!("ccgwsticky={}; Path=/", wire::NODE))
}

/// The effect of a sign-in: a new session (ending the current one when `force`), or
/// `100-002` when the agent has one. `client`: who signs in (a bridge over the gateway
/// interface, or a person or supervisor through the simulator's controls). Returns the new Guid and the sign-in time.
pub(crate) fn sign_in(
    shared: &Shared,
    agent_id: &str,
    status: Option<i64>,
    force: bool,
    client: Client,
    push: Option<PushTarget>,
) -> Result<(String, u64), &'static str> {
    let agent = shared.agents.get_or_create(agent_id);
    let signed_in = {
        let mut state = agent.lock();
        if state.session.is_some() {
            if !force {
                return Err("100-002");
            }
            if client == Client::Bridge && state.session.as_ref().is_some_and(|s| s.other_client())
            {
                shared.other_clients_kicked.fetch_add(1, Ordering::Relaxed);
            }
            // The old session's poller learns it was replaced.
            let ended = state.end_with_shutdown();
            shared
                .agents
                .record_end(agent_id, ended, EndCause::ForceLogin { by: client });
        }
        let session = state.start_session(agent_id, shared.agents.rotation_period());
        session.client = client;
        if push.is_some() {
            session.push = push;
            shared.start_pusher(&agent, session.serial);
        }
        session.push_event("AgentOther_InService", Value::Null);
        session.push_event("AgentState_Ready", Value::Null);
        match status {
            Some(3) => session.push_event("AgentState_SetNotReady_Success", Value::Null),
            Some(5) => session.push_event("AgentState_Work", Value::Null),
            _ => {}
        }
        (session.guid().to_owned(), session.login_time_ms)
    };
    agent.wake();
    Ok(signed_in)
}

/// `DELETE /onlineagent/{id}/logout` and `.../forcelogout`: ends the session. No
/// `AgentOther_ShutdownService` follows an active sign-out (the vendor says it may not arrive);
/// a held poll answers `100-006` at once.
pub(crate) fn logout(shared: &Shared, agent_id: &str, guid: Option<&str>) -> Reply {
    let Some(agent) = shared.agents.get(agent_id) else {
        return Reply::retcode(NOT_SIGNED_IN);
    };
    {
        let mut state = agent.lock();
        let now = Instant::now();
        // A session told to sign in again (DR, `105-005/006/007`) can still be signed out with
        // its own Guid: the vendor says "sign in again", and a client cannot do that while the
        // gateway holds the old session without forcing. [Assumption: the vendor documents no
        // logout behaviour during DR; a gateway that refused it would leave the agent to its
        // idle sign-out, which the bridge waits for.]
        let dr_logout = state
            .session
            .as_ref()
            .is_some_and(|s| s.sign_in_again.is_some() && guid.is_some_and(|g| s.accepts(g, now)));
        if !dr_logout {
            if let Err(retcode) = state.authenticate(guid, now) {
                return Reply::retcode(retcode);
            }
        }
        let ended = state.end_session().map(|s| s.client);
        if ended.is_some_and(|c| c != Client::Bridge) {
            shared.other_clients_kicked.fetch_add(1, Ordering::Relaxed);
        }
        shared
            .agents
            .record_end(agent_id, ended, EndCause::OwnGuidLogout);
    }
    agent.wake();
    Reply::json(&wire::success())
}

/// `PUT /onlineagent/{id}/updateGuid`: a new Guid in the body (`result.guid`). The old one is
/// then handled like after a rotation (refused, or kept for the overlap in non-strict dynamic
/// mode).
pub(crate) fn update_guid(shared: &Shared, agent_id: &str, guid: Option<&str>) -> Reply {
    let Some(agent) = shared.agents.get(agent_id) else {
        return Reply::retcode(NOT_SIGNED_IN);
    };
    let mut state = agent.lock();
    let now = Instant::now();
    if let Err(retcode) = state.authenticate(guid, now) {
        return Reply::retcode(retcode);
    }
    let Some(new_guid) = state.replace_guid(&shared.agents, now) else {
        return Reply::retcode(NOT_SIGNED_IN);
    };
    Reply::json(&json!({"result": {"guid": new_guid}, "message": "success", "retcode": "0"}))
}

/// The parts of a sign-in body the simulator checks.
struct LoginRequest {
    password: String,
    status: Option<i64>,
    /// Both `callBackUri` and `serviceToken` given: push mode (api-notes §1.1).
    push: Option<PushTarget>,
}

/// Longest accepted `callBackUri` (characters).
const MAX_CALLBACK_URI: usize = 200;
/// Longest accepted `serviceToken` (characters; alphanumerics only).
const MAX_SERVICE_TOKEN: usize = 50;

impl LoginRequest {
    /// `None` when the body breaks the documented rules (→ `100-001`): not a JSON object,
    /// `password` missing or longer than 32, `phonenum` missing, empty or longer than 24.
    /// Like the gateway's examples, numbers may come as strings.
    fn parse(body: &[u8]) -> Option<LoginRequest> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let password = value.get("password")?.as_str()?;
        if password.chars().count() > MAX_PASSWORD {
            return None;
        }
        let phonenum = match value.get("phonenum")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        if phonenum.is_empty() || phonenum.chars().count() > MAX_PHONENUM {
            return None;
        }
        let status = match value.get("status") {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        };
        let uri = value.get("callBackUri").and_then(Value::as_str);
        let token = value.get("serviceToken").and_then(Value::as_str);
        if uri.is_some_and(|u| u.chars().count() > MAX_CALLBACK_URI)
            || token.is_some_and(|t| {
                t.chars().count() > MAX_SERVICE_TOKEN
                    || !t.chars().all(|c| c.is_ascii_alphanumeric())
            })
        {
            return None;
        }
        // [Unsure: whether the gateway checks the URI's scheme; it calls back over HTTPS only.]
        let push = match (uri, token) {
            (Some(uri), Some(token)) if !uri.is_empty() && !token.is_empty() => Some(PushTarget {
                uri: uri.to_owned(),
                token: token.to_owned(),
            }),
            _ => None,
        };
        Some(LoginRequest {
            password: password.to_owned(),
            status,
            push,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_body_rules() {
        assert!(LoginRequest::parse(br#"{"password":"","phonenum":"88001"}"#).is_some());
        let r = LoginRequest::parse(br#"{"password":"p","phonenum":"1","status":"3"}"#);
        assert_eq!(r.map(|r| r.status), Some(Some(3)));
        assert!(LoginRequest::parse(br#"{"password":"","phonenum":""}"#).is_none());
        assert!(LoginRequest::parse(br#"{"phonenum":"1"}"#).is_none());
        assert!(LoginRequest::parse(b"[]").is_none());
        let long_pw = format!(r#"{{"password":"{}","phonenum":"1"}}"#, "p".repeat(33));
        assert!(LoginRequest::parse(long_pw.as_bytes()).is_none());
        let long_phone = format!(r#"{{"password":"","phonenum":"{}"}}"#, "1".repeat(25));
        assert!(LoginRequest::parse(long_phone.as_bytes()).is_none());
        let push = |extra: &str| {
            LoginRequest::parse(format!(r#"{{"password":"","phonenum":"1"{extra}}}"#).as_bytes())
                .map(|r| r.push.is_some())
        };
        assert_eq!(
            push(r#","callBackUri":"https://h/x","serviceToken":"abc1""#),
            Some(true)
        );
        assert_eq!(push(r#","callBackUri":"https://h/x""#), Some(false));
        assert_eq!(push(r#","serviceToken":"abc1""#), Some(false));
        assert_eq!(
            push(r#","callBackUri":"https://h/x","serviceToken":"a-b""#),
            None
        );
        let long_uri = format!(
            r#","callBackUri":"https://h/{}","serviceToken":"a""#,
            "x".repeat(200)
        );
        assert_eq!(push(&long_uri), None);
        let long_token = format!(
            r#","callBackUri":"https://h/x","serviceToken":"{}""#,
            "a".repeat(51)
        );
        assert_eq!(push(&long_token), None);
    }
}
