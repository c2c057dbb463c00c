//! Per-agent authentication state: the current Guid and the cookie jar (and the agent's poll URL,
//! built once per session, as this is the state every request of the agent passes).
//!
//! The gateway client adopts every `Set-GUID` it sees into this state before the answer is
//! returned, so "the newest Guid wins" (design §1) holds no matter which call or poll brought it.
//! A `watch` channel lets a caller whose request was refused for its Guid wait for the poll loop
//! to deliver the next one instead of guessing.

use crate::secret::Guid;
use reqwest::header::HeaderValue;
use std::sync::{Mutex, OnceLock};
use tokio::sync::watch;

/// The Guid an agent currently holds, with a counter bumped on every change.
#[derive(Clone, Debug, Default)]
pub struct GuidState {
    /// `None` until the first sign-in answered.
    pub guid: Option<Guid>,
    /// Incremented each time a different Guid is adopted.
    pub generation: u64,
}

/// One agent's Guid and cookies, shared by its poll loop and every call made for it.
/// Its `Debug` shows neither: a load balancer's cookie can be as good as a session token.
pub struct AgentAuth {
    guid: watch::Sender<GuidState>,
    cookies: Mutex<Jar>,
    poll_url: OnceLock<reqwest::Url>,
}

/// The stored cookies and the `Cookie` header value built from them when they last changed
/// (they change on sign-in, rarely after), so requests do not rebuild it.
#[derive(Default)]
struct Jar {
    text: Option<String>,
    header: Option<HeaderValue>,
}

impl Default for AgentAuth {
    fn default() -> Self {
        Self {
            guid: watch::Sender::new(GuidState::default()),
            cookies: Mutex::new(Jar::default()),
            poll_url: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for AgentAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cookies = self.cookies.lock().map_or(0, |c| {
            c.text.as_deref().map_or(0, |c| c.split("; ").count())
        });
        f.debug_struct("AgentAuth")
            .field("guid", &self.guid.borrow())
            .field("cookies", &format_args!("<{cookies} redacted>"))
            .finish()
    }
}

impl AgentAuth {
    /// A snapshot of the current Guid and its generation.
    pub fn current(&self) -> GuidState {
        self.guid.borrow().clone()
    }

    /// Watches Guid changes (used to wait for a rotation that is in flight).
    pub fn subscribe(&self) -> watch::Receiver<GuidState> {
        self.guid.subscribe()
    }

    /// Adopts a Guid from a `Set-GUID` header; a repeat of the current value changes nothing.
    pub fn adopt(&self, new: Guid) -> bool {
        self.guid.send_if_modified(|state| {
            if state.guid.as_ref() == Some(&new) {
                return false;
            }
            state.guid = Some(new);
            state.generation += 1;
            true
        })
    }

    /// The agent's event-poll URL, built by `build` on first use (one agent per `AgentAuth`).
    pub fn poll_url(&self, build: impl FnOnce() -> reqwest::Url) -> &reqwest::Url {
        self.poll_url.get_or_init(build)
    }

    /// The `Cookie` header value to send, if the gateway (or its load balancer) set any; marked
    /// sensitive, so HTTP tooling never prints it and HTTP/2 never indexes it.
    pub fn cookie_header(&self) -> Option<HeaderValue> {
        self.cookies.lock().ok()?.header.clone()
    }

    /// The cookies as sent (`a=1; b=2`), for handing the session to another instance.
    pub fn cookie_text(&self) -> Option<String> {
        self.cookies.lock().ok()?.text.clone()
    }

    /// Credentials of a session handed over by another instance: its Guid and cookies.
    pub fn restored(guid: Guid, cookies: Option<&str>) -> AgentAuth {
        let auth = AgentAuth::default();
        auth.adopt(guid);
        if let Some(cookies) = cookies {
            auth.store_cookies(cookies.split("; "));
        }
        auth
    }

    /// Stores `name=value` pairs from `Set-Cookie` headers (attributes dropped; same name replaced).
    ///
    /// Deliberately minimal: the gateway's cookies exist for load-balancer stickiness
    /// (api-notes §2 "Cookies"), so expiry and path scoping are not modelled.
    pub fn store_cookies<'a>(&self, set_cookies: impl Iterator<Item = &'a str>) {
        let Ok(mut jar) = self.cookies.lock() else {
            return;
        };
        for raw in set_cookies {
            let pair = raw.split(';').next().unwrap_or("").trim();
            let Some((name, _)) = pair.split_once('=') else {
                continue;
            };
            let mut kept: Vec<&str> = jar
                .text
                .as_deref()
                .unwrap_or("")
                .split("; ")
                .filter(|c| !c.is_empty() && c.split_once('=').map(|(n, _)| n) != Some(name))
                .collect();
            kept.push(pair);
            let text = kept.join("; ");
            jar.header = HeaderValue::from_str(&text).ok().map(|mut value| {
                value.set_sensitive(true);
                value
            });
            jar.text = Some(text);
        }
    }
}

/// Extracts the Guid from a `Set-GUID` value: the text after the first `=`, cut at the first `;`.
///
/// Huawei's examples are `JSESSIONID=<guid>`; attributes were never seen but are tolerated
/// (api-notes §9.9). A value without `=` is taken whole. Empty results are rejected.
pub fn parse_set_guid(value: &str) -> Option<Guid> {
    let after = value.split_once('=').map_or(value, |(_, v)| v);
    let guid = after.split(';').next().unwrap_or("").trim();
    (!guid.is_empty()).then(|| Guid::new(guid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_guid_vectors_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for case in v["set_guid_headers"].as_array().unwrap() {
            let parsed = parse_set_guid(case["header"].as_str().unwrap()).unwrap();
            assert_eq!(parsed.expose(), case["guid"].as_str().unwrap());
        }
        assert!(parse_set_guid("JSESSIONID=").is_none());
        assert!(parse_set_guid("").is_none());
        assert_eq!(parse_set_guid("abc.Node1").unwrap().expose(), "abc.Node1");
    }

    #[test]
    fn adopting_bumps_generation_once_per_change() {
        let auth = AgentAuth::default();
        assert!(auth.adopt(Guid::new("a")));
        assert!(!auth.adopt(Guid::new("a")));
        assert!(auth.adopt(Guid::new("b")));
        assert_eq!(auth.current().generation, 2);
    }

    #[test]
    fn cookies_replace_by_name() {
        let auth = AgentAuth::default();
        auth.store_cookies(["a=1; Path=/", "b=2"].into_iter());
        auth.store_cookies(["a=3; HttpOnly"].into_iter());
        assert_eq!(auth.cookie_header().unwrap(), "b=2; a=3");
    }

    #[test]
    fn cookies_are_sensitive_and_never_in_debug_output() {
        let auth = AgentAuth::default();
        auth.adopt(Guid::new("279fe21d-guid"));
        auth.store_cookies(["JSESSIONID=c00kie-secret; Path=/"].into_iter());
        let header = auth.cookie_header().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("c00kie"));
        let shown = format!("{auth:?}");
        assert!(!shown.contains("c00kie"), "{shown}");
        assert!(!shown.contains("279fe21d"), "{shown}");
        assert!(shown.contains("<1 redacted>"), "{shown}");
    }
}
