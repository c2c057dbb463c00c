//! The CC-Gateway interfaces the bridge calls: method, path and whether a Guid is sent.
//!
//! One table, so that the spelling of every vendor path (`forefast`, `backfast`, `stopplay`…)
//! lives in exactly one place (api-notes §0).

use reqwest::{Method, Url};

/// One vendor interface. `Copy` and tiny: it also serves as the metrics/log label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `PUT /onlineagent/{id}`
    Login,
    /// `PUT /onlineagent/{id}/forcelogin`
    ForceLogin,
    /// `DELETE /onlineagent/{id}/logout`
    Logout,
    /// `GET /agentevent/{id}` — the long poll, also the agent's heartbeat.
    Poll,
    /// `POST /onlineagent/{id}/handshake` — the heartbeat of a push-mode session (api-notes §3.3).
    Heartbeat,
    /// `PUT /recordplay/{id}/play`
    BeginPlay,
    /// `DELETE /recordplay/{id}/stopplay`
    StopPlay,
    /// `POST /recordplay/{id}/pauseplay`
    PausePlay,
    /// `POST /recordplay/{id}/resumeplay`
    ResumePlay,
    /// `POST /recordplay/{id}/forefast/{seconds}`
    FastForward(u32),
    /// `POST /recordplay/{id}/backfast/{seconds}`
    Rewind(u32),
}

impl Interface {
    /// Every interface once (the seconds of the fast-play ones do not matter): for what is
    /// prepared per interface, such as pre-resolved metric series.
    pub const ALL: [Interface; 11] = [
        Interface::Login,
        Interface::ForceLogin,
        Interface::Logout,
        Interface::Poll,
        Interface::Heartbeat,
        Interface::BeginPlay,
        Interface::StopPlay,
        Interface::PausePlay,
        Interface::ResumePlay,
        Interface::FastForward(0),
        Interface::Rewind(0),
    ];

    /// The vendor's log name (api-notes §0); stable, so it is also the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Interface::Login => "login",
            Interface::ForceLogin => "forceLogin",
            Interface::Logout => "logout",
            Interface::Poll => "getAgentEvent",
            Interface::Heartbeat => "handShake",
            Interface::BeginPlay => "beginPlay",
            Interface::StopPlay => "stopPlay",
            Interface::PausePlay => "pausePlay",
            Interface::ResumePlay => "resumePlay",
            Interface::FastForward(_) => "foreFastPlay",
            Interface::Rewind(_) => "backFastPlay",
        }
    }

    /// HTTP method the gateway routes this interface on.
    pub fn method(self) -> Method {
        match self {
            Interface::Login | Interface::ForceLogin | Interface::BeginPlay => Method::PUT,
            Interface::Logout | Interface::StopPlay => Method::DELETE,
            Interface::Poll => Method::GET,
            Interface::Heartbeat
            | Interface::PausePlay
            | Interface::ResumePlay
            | Interface::FastForward(_)
            | Interface::Rewind(_) => Method::POST,
        }
    }

    /// Sign-in interfaces run before any Guid exists.
    pub fn sends_guid(self) -> bool {
        !matches!(self, Interface::Login | Interface::ForceLogin)
    }

    /// Appends this interface's path for `agent_id` to `url` (the parsed base ending in
    /// `/agentgateway/resource`): segments are pushed, so no full URL is parsed per request.
    pub fn push_path(self, url: &mut Url, agent_id: &str) {
        let seconds;
        let (parts, len): ([&str; 4], usize) = match self {
            Interface::Login => (["onlineagent", agent_id, "", ""], 2),
            Interface::ForceLogin => (["onlineagent", agent_id, "forcelogin", ""], 3),
            Interface::Logout => (["onlineagent", agent_id, "logout", ""], 3),
            Interface::Poll => (["agentevent", agent_id, "", ""], 2),
            Interface::Heartbeat => (["onlineagent", agent_id, "handshake", ""], 3),
            Interface::BeginPlay => (["recordplay", agent_id, "play", ""], 3),
            Interface::StopPlay => (["recordplay", agent_id, "stopplay", ""], 3),
            Interface::PausePlay => (["recordplay", agent_id, "pauseplay", ""], 3),
            Interface::ResumePlay => (["recordplay", agent_id, "resumeplay", ""], 3),
            Interface::FastForward(s) => {
                seconds = s.to_string();
                (["recordplay", agent_id, "forefast", &seconds], 4)
            }
            Interface::Rewind(s) => {
                seconds = s.to_string();
                (["recordplay", agent_id, "backfast", &seconds], 4)
            }
        };
        // An https base always has path segments; `config` refuses any other scheme.
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(&parts[..len]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods_follow_the_vendor_table() {
        let cases = [
            (Interface::Login, "PUT", "/onlineagent/101"),
            (Interface::ForceLogin, "PUT", "/onlineagent/101/forcelogin"),
            (Interface::Logout, "DELETE", "/onlineagent/101/logout"),
            (Interface::Poll, "GET", "/agentevent/101"),
            (Interface::Heartbeat, "POST", "/onlineagent/101/handshake"),
            (Interface::BeginPlay, "PUT", "/recordplay/101/play"),
            (Interface::StopPlay, "DELETE", "/recordplay/101/stopplay"),
            (Interface::PausePlay, "POST", "/recordplay/101/pauseplay"),
            (Interface::ResumePlay, "POST", "/recordplay/101/resumeplay"),
            (
                Interface::FastForward(7),
                "POST",
                "/recordplay/101/forefast/7",
            ),
            (Interface::Rewind(9), "POST", "/recordplay/101/backfast/9"),
        ];
        let base = Url::parse("https://gw:8043/agentgateway/resource").unwrap();
        for (iface, method, path) in cases {
            let mut url = base.clone();
            iface.push_path(&mut url, "101");
            assert_eq!(url.path(), format!("/agentgateway/resource{path}"));
            assert_eq!(iface.method().as_str(), method);
        }
        assert!(!Interface::Login.sends_guid() && !Interface::ForceLogin.sends_guid());
        assert!(Interface::Poll.sends_guid());
    }
}
