//! [`BridgeArgs::validate`]: every flag checked and every file it names read, into a
//! [`Config`], before any port is bound.

use super::agents_file::{read_password_file, refuse_world_readable};
use super::flags::EventsFlag;
use super::{
    invalid, load_agents, pem, read, BridgeArgs, Config, ConfigError, PinnedAgent, ServerSettings,
    ServerTls,
};
use crate::callback::CallbackSettings;
use crate::events::EventBudget;
use crate::events::HeartbeatSettings;
use crate::gateway::GatewayConfig;
use crate::grpc::validate::{Limits, VoicePathPolicy};
use crate::pool::{EtcdAuth, EtcdTls, Keyring, PoolConfig};
use crate::session::{EventMode, PushSettings, SessionSettings};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The admin listener's default: the pod IP, where the kubelet's probes and Prometheus dial.
const ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9090);
/// The callback listener's default: the pod IP, where the gateway calls back.
const CALLBACK_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9443);
/// Under `--simulate` the gateway is in this process: loopback.
const SIMULATE_CALLBACK_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9443);
/// The callback path of the `--simulate` demo.
const SIMULATE_CALLBACK_PATH: &str = "/ccgw/events";
/// Connections the callback server serves at once (the gateway needs a handful; the bound
/// keeps slow or hostile clients from exhausting file descriptors).
const CALLBACK_MAX_CONNECTIONS: usize = 256;
/// The vendor's limit for `callBackUri` (api-notes §1.1).
const MAX_CALLBACK_URI: usize = 200;
/// Under `--simulate` a demo on a workstation: no kubelet probes it, so it stays on loopback.
const SIMULATE_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

impl BridgeArgs {
    /// Validates everything and reads the referenced files. `gateway_override` replaces
    /// `--gateway-url`/`--ca-cert` (used by `--simulate`).
    pub fn validate(
        &self,
        gateway_override: Option<(String, Vec<u8>)>,
    ) -> Result<Config, ConfigError> {
        if self.simulate && !self.etcd_endpoints.is_empty() {
            return Err(invalid(
                "--simulate starts a gateway of this process's own, so with --etcd-endpoints every replica would get its own gateway and the pool would share nothing; run one simulator for all replicas instead: `ccgw-bridge simulate` prints url=… and ca=…, give them to each replica as --gateway-url and --ca-cert",
            ));
        }
        if self.simulate && (self.gateway_url.is_some() || self.ca_cert.is_some()) {
            return Err(invalid(
                "--simulate runs its own gateway: it cannot be combined with --gateway-url or --ca-cert (CCGW_GATEWAY_URL, CCGW_CA_CERT); drop one or the other",
            ));
        }
        let (base_url, ca_pem) = match gateway_override {
            Some((url, ca)) => (url, Some(ca)),
            None => {
                let url = self.gateway_url.clone().ok_or_else(|| {
                    invalid("--gateway-url (CCGW_GATEWAY_URL) is required, e.g. https://10.0.0.5:8043; or use --simulate")
                })?;
                let ca = self
                    .ca_cert
                    .as_deref()
                    .map(|p| pem::ca_bundle(p, "--ca-cert"))
                    .transpose()?;
                (url, ca)
            }
        };
        validate_gateway_url(&base_url)?;
        let client_identity_pem = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let (mut pem, key) = pem::identity((cert, "--client-cert"), (key, "--client-key"))?;
                pem.push(b'\n');
                pem.extend(key);
                Some(pem)
            }
            _ => None,
        };
        if self.poll_timeout <= Duration::from_secs(10) {
            return Err(invalid(format!(
                "--poll-timeout {:?} must exceed the gateway's 10 s long-poll hold",
                self.poll_timeout
            )));
        }
        if self.request_timeout < crate::gateway::MIN_REQUEST_BUDGET {
            return Err(invalid(format!(
                "--request-timeout {:?} must be at least {:?}, the least time a gateway request is sent with",
                self.request_timeout,
                crate::gateway::MIN_REQUEST_BUDGET
            )));
        }
        if self.agent_id_min == 0 || self.agent_id_min > self.agent_id_max {
            return Err(invalid(
                "--agent-id-min must be at least 1 and not above --agent-id-max",
            ));
        }
        if self.event_window == 0 || self.event_window > 1 << 20 {
            return Err(invalid("--event-window must be between 1 and 1048576"));
        }
        if self.sign_in_concurrency == 0 || self.sign_in_concurrency > 1024 {
            return Err(invalid("--sign-in-concurrency must be between 1 and 1024"));
        }
        if self.event_budget < self.max_response_bytes.saturating_mul(2) {
            return Err(invalid(
                "--event-budget must be at least twice --max-response-bytes (one event can be that large)",
            ));
        }
        if self.gateway_idle_timeout.is_zero() {
            return Err(invalid("--gateway-idle-timeout must be above zero"));
        }
        if self.event_max_age.is_zero() {
            return Err(invalid("--event-max-age must be above zero"));
        }
        if self.max_response_bytes < 1024 {
            return Err(invalid("--max-response-bytes must be at least 1024"));
        }
        let voice_paths = if self.voice_path_allow.is_empty() {
            None
        } else {
            Some(
                VoicePathPolicy::new(&self.voice_path_allow)
                    .map_err(|e| invalid(format!("--voice-path-allow: {e}")))?,
            )
        };
        let limits = Limits {
            agent_id_min: self.agent_id_min,
            agent_id_max: self.agent_id_max,
            voice_paths,
        };
        let agents = match &self.agents_file {
            Some(path) => load_agents(path, &limits, &|name| std::env::var(name).ok())?,
            None => Vec::new(),
        };
        let server = self.server_settings()?;
        let pool = self.pool_config(&agents)?;
        let (events, callback) = self.push_config()?;
        let mut sessions = SessionSettings {
            event_window: self.event_window,
            event_budget: EventBudget::new(self.event_budget, self.event_max_age),
            hold_credentials: !self.no_resign_in,
            sign_in_concurrency: self.sign_in_concurrency,
            gateway_idle_timeout: self.gateway_idle_timeout,
            events,
            ..SessionSettings::default()
        };
        sessions.poll.gap = self.poll_gap;
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen.unwrap_or(if self.simulate {
                SIMULATE_ADMIN_LISTEN
            } else {
                ADMIN_LISTEN
            }),
            gateway: GatewayConfig {
                base_url,
                ca_pem,
                client_identity_pem,
                insecure_skip_verify: self.insecure_skip_verify,
                request_timeout: self.request_timeout,
                poll_timeout: self.poll_timeout,
                connect_timeout: self.connect_timeout,
                max_body_bytes: self.max_response_bytes,
            },
            sessions,
            limits,
            agents,
            sign_out_on_shutdown: !self.no_sign_out_on_shutdown,
            drain_timeout: self.drain_timeout,
            server,
            callback,
            pool,
            coordinator: None,
        })
    }

    /// `--events` and the push-mode flags. Under `--simulate` the callback server's
    /// certificate is the simulator's (filled in by `main` once it runs; the simulator trusts
    /// its own CA), and the URL defaults to the loopback listener.
    fn push_config(&self) -> Result<(EventMode, Option<CallbackSettings>), ConfigError> {
        let push_flags = self.callback_url.is_some()
            || self.callback_listen.is_some()
            || self.callback_cert.is_some();
        if self.events == EventsFlag::Poll {
            if push_flags {
                return Err(invalid(
                    "--callback-url, --callback-listen and --callback-cert are for --events push (CCGW_EVENTS=push); drop them or add it",
                ));
            }
            return Ok((EventMode::Poll, None));
        }
        if self.heartbeat_interval.is_zero()
            || self.heartbeat_interval > self.gateway_idle_timeout / 3
        {
            return Err(invalid(format!(
                "--heartbeat-interval {:?} must be above zero and at most a third of --gateway-idle-timeout ({:?}), so two lost heartbeats do not sign agents out (vendor: 30 s against 2 minutes)",
                self.heartbeat_interval, self.gateway_idle_timeout
            )));
        }
        if self.callback_max_body < 1024 {
            return Err(invalid("--callback-max-body must be at least 1KiB"));
        }
        if self.callback_timeout.is_zero() {
            return Err(invalid("--callback-timeout must be above zero"));
        }
        let listen = self.callback_listen.unwrap_or(if self.simulate {
            SIMULATE_CALLBACK_LISTEN
        } else {
            CALLBACK_LISTEN
        });
        let url = match (&self.callback_url, self.simulate) {
            (Some(url), _) => url.clone(),
            (None, true) => format!("https://{listen}{SIMULATE_CALLBACK_PATH}"),
            (None, false) => {
                return Err(invalid(
                    "--events push needs --callback-url (CCGW_CALLBACK_URL): the https address the gateway can reach this bridge at, e.g. https://10.0.0.7:9443/ccgw/events (in Kubernetes: the pod IP from the downward API)",
                ))
            }
        };
        let path = validate_callback_url(&url, self.agent_id_max)?;
        let (cert_pem, key_pem) = match (&self.callback_cert, &self.callback_key) {
            (Some(cert), Some(key)) => {
                pem::identity((cert, "--callback-cert"), (key, "--callback-key"))?
            }
            // Filled in by `main` from the simulator.
            _ if self.simulate => (Vec::new(), Vec::new()),
            _ => {
                return Err(invalid(
                    "--events push needs --callback-cert and --callback-key (CCGW_CALLBACK_CERT, CCGW_CALLBACK_KEY): the certificate the gateway sees when it calls back (TLS 1.2+)",
                ))
            }
        };
        let callback = CallbackSettings {
            listen,
            cert_pem,
            key_pem,
            client_ca_pem: self
                .callback_client_ca
                .as_deref()
                .map(|p| pem::ca_bundle(p, "--callback-client-ca"))
                .transpose()?,
            path,
            max_body_bytes: self.callback_max_body,
            header_timeout: self.callback_timeout,
            body_timeout: self.callback_timeout,
            max_connections: CALLBACK_MAX_CONNECTIONS,
        };
        let push = PushSettings {
            callback_url: Arc::from(url.trim_end_matches('/')),
            heartbeat: HeartbeatSettings {
                every: self.heartbeat_interval,
                ..HeartbeatSettings::default()
            },
        };
        Ok((EventMode::Push(push), Some(callback)))
    }

    fn pool_config(&self, agents: &[PinnedAgent]) -> Result<Option<PoolConfig>, ConfigError> {
        if self.etcd_endpoints.is_empty() {
            return Ok(None);
        }
        if !cfg!(feature = "pool") {
            return Err(invalid(
                "--etcd-endpoints needs a ccgw-bridge built with the `pool` feature (cargo build --features pool)",
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            return Err(invalid(
                "--lease-ttl must be a whole number of seconds, at least 2s",
            ));
        }
        if let Some(a) = agents.iter().find(|a| a.params.force) {
            return Err(invalid(format!(
                "--agents-file: agent {} has force = true, which would make pool instances kick each other: the pool never forces (a take-over logs the previous session out with its own Guid)",
                a.agent_id
            )));
        }
        let instance = match &self.instance_name {
            Some(name) => name.trim().to_owned(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
        };
        if instance.is_empty() || instance.contains('/') {
            return Err(invalid(
                "--instance-name must be non-empty and contain no '/' (default: the hostname)",
            ));
        }
        let mut prefix = self.etcd_prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Some(PoolConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix,
            instance,
            lease_ttl: self.lease_ttl,
            move_wait: self.pool_move_wait,
            tls: self.etcd_tls()?,
            auth: self.etcd_auth()?,
            keyring: self.pool_keyring()?,
        }))
    }

    /// The pool key(s) sealing the Guid hand-off (`--pool-key-file`), refused if anyone may
    /// read them.
    fn pool_keyring(&self) -> Result<Option<Arc<Keyring>>, ConfigError> {
        let Some(current) = &self.pool_key_file else {
            return Ok(None);
        };
        refuse_world_readable(current, "--pool-key-file", "it holds the pool key")?;
        if let Some(previous) = &self.pool_key_previous_file {
            refuse_world_readable(previous, "--pool-key-previous-file", "it holds a pool key")?;
        }
        Keyring::from_files(current, self.pool_key_previous_file.as_deref())
            .map(|k| Some(Arc::new(k)))
            .map_err(|e| invalid(e.to_string()))
    }

    /// TLS to etcd: every endpoint `https://` with a CA, or every one plain (a mix is refused:
    /// the client would send credentials in clear to some of them).
    fn etcd_tls(&self) -> Result<Option<EtcdTls>, ConfigError> {
        let https = self
            .etcd_endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != self.etcd_endpoints.len() {
            return Err(invalid(
                "--etcd-endpoints: give every endpoint with https:// or none (a mix would send credentials in clear to some)",
            ));
        }
        let Some(ca) = &self.etcd_ca_cert else {
            if https != 0 {
                return Err(invalid(
                    "--etcd-endpoints are https:// but no --etcd-ca-cert was given: name the PEM CA bundle that signed etcd's certificate",
                ));
            }
            if self.etcd_client_cert.is_some() {
                return Err(invalid(
                    "--etcd-client-cert needs https:// --etcd-endpoints and --etcd-ca-cert",
                ));
            }
            return Ok(None);
        };
        if https == 0 {
            return Err(invalid(
                "--etcd-ca-cert is given but --etcd-endpoints are http://: write them with https:// (etcd's --cert-file port)",
            ));
        }
        let ca_pem = pem::ca_bundle(ca, "--etcd-ca-cert")?;
        let identity = match (&self.etcd_client_cert, &self.etcd_client_key) {
            (Some(cert), Some(key)) => {
                refuse_world_readable(key, "--etcd-client-key", "it holds a private key")?;
                let (cert_pem, key_pem) =
                    pem::identity((cert, "--etcd-client-cert"), (key, "--etcd-client-key"))?;
                Some((cert_pem, Zeroizing::new(key_pem)))
            }
            _ => None,
        };
        Ok(Some(EtcdTls { ca_pem, identity }))
    }

    fn etcd_auth(&self) -> Result<Option<EtcdAuth>, ConfigError> {
        let (Some(user), Some(file)) = (&self.etcd_user, &self.etcd_password_file) else {
            return Ok(None);
        };
        if user.is_empty() {
            return Err(invalid("--etcd-user must not be empty"));
        }
        refuse_world_readable(file, "--etcd-password-file", "it holds a password")?;
        Ok(Some(EtcdAuth {
            user: user.clone(),
            password: read_password_file(file, "--etcd-password-file")?,
        }))
    }

    fn server_settings(&self) -> Result<ServerSettings, ConfigError> {
        if self.max_request_bytes < 1024 {
            return Err(invalid("--max-request-bytes must be at least 1024"));
        }
        if self.max_concurrent_streams == 0 || self.max_concurrent_requests == 0 {
            return Err(invalid(
                "--max-concurrent-streams and --max-concurrent-requests must be at least 1",
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = pem::identity((cert, "--tls-cert"), (key, "--tls-key"))?;
                Some(ServerTls {
                    cert,
                    key,
                    client_ca: self
                        .tls_client_ca
                        .as_deref()
                        .map(|p| pem::ca_bundle(p, "--tls-client-ca"))
                        .transpose()?,
                })
            }
            _ => None,
        };
        let auth_token = match &self.auth_token_file {
            Some(path) => {
                refuse_world_readable(path, "--auth-token-file", "it holds the API token")?;
                let raw = read(path, "--auth-token-file")?;
                let token = String::from_utf8(raw)
                    .map_err(|_| invalid("--auth-token-file: not UTF-8"))?
                    .trim()
                    .to_owned();
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "--auth-token-file: the token must be at least 16 characters without spaces",
                    ));
                }
                Some(token.into_bytes())
            }
            None => None,
        };
        Ok(ServerSettings {
            max_request_bytes: self.max_request_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            max_concurrent_requests: self.max_concurrent_requests,
            keepalive_interval: self.http2_keepalive_interval,
            keepalive_timeout: self.http2_keepalive_timeout,
            tls,
            auth_token,
        })
    }
}

fn validate_gateway_url(url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid(format!("--gateway-url {url:?}: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(invalid(format!(
            "--gateway-url {url:?}: the CC-Gateway is reached over https only"
        )));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(invalid(format!(
            "--gateway-url {url:?}: give scheme, host and port only; the bridge appends /agentgateway/resource/…"
        )));
    }
    Ok(())
}

/// Checks `--callback-url` (https, a host the gateway can reach, no query, short enough for
/// the vendor's 200 characters once `/<agent id>` is appended) and returns its path.
fn validate_callback_url(url: &str, agent_id_max: u64) -> Result<String, ConfigError> {
    let example = "e.g. https://10.0.0.7:9443/ccgw/events";
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        invalid(format!(
            "--callback-url {url:?} is not a URL ({e}); {example}"
        ))
    })?;
    if parsed.scheme() != "https" {
        return Err(invalid(format!(
            "--callback-url must be https: the gateway calls back over TLS 1.2 or newer only; {example}"
        )));
    }
    match parsed.host_str() {
        None | Some("") => {
            return Err(invalid(format!("--callback-url names no host; {example}")));
        }
        Some("0.0.0.0" | "[::]") => {
            return Err(invalid(format!(
                "--callback-url names {}, which no gateway can call; give the address the gateway reaches this bridge at (in Kubernetes the pod IP: status.podIP through the downward API); {example}",
                parsed.host_str().unwrap_or_default()
            )));
        }
        Some(_) => {}
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid(format!(
            "--callback-url must have no query or fragment: the agent id is appended to its path; {example}"
        )));
    }
    let id_digits = agent_id_max.to_string().len();
    let longest = url.trim_end_matches('/').chars().count() + 1 + id_digits;
    if longest > MAX_CALLBACK_URI {
        return Err(invalid(format!(
            "--callback-url is {} characters; with /<agent id> (up to {id_digits} digits) that is {longest}, above the gateway's limit of {MAX_CALLBACK_URI}: shorten the path or use an IP address",
            url.chars().count()
        )));
    }
    Ok(parsed.path().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["ccgw-bridge", "--gateway-url", "https://10.0.0.5:8043"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.bridge.validate(None).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_sane() {
        let c = args(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.limits.agent_id_max, 999_999);
        assert!(c.sign_out_on_shutdown && c.sessions.hold_credentials);
        assert_eq!(c.sessions.event_budget.max_bytes(), 16 << 20);
        let c = args(&["--event-budget", "64KiB", "--max-response-bytes", "4096"]).unwrap();
        assert_eq!(c.sessions.event_budget.max_bytes(), 64 << 10);
    }

    /// `--simulate` is a workstation demo: its admin port stays on loopback unless told
    /// otherwise; a real bridge's is on the pod IP for the kubelet.
    #[test]
    fn simulate_keeps_the_admin_listener_on_loopback_unless_told() {
        let simulate = |extra: &[&str]| {
            let argv = [&["ccgw-bridge", "--simulate"][..], extra].concat();
            let cli = Cli::try_parse_from(argv).unwrap();
            let sim = Some(("https://127.0.0.1:8043".to_owned(), Vec::new()));
            cli.bridge.validate(sim).unwrap().admin_listen.to_string()
        };
        assert_eq!(simulate(&[]), "127.0.0.1:9090");
        assert_eq!(
            simulate(&["--admin-listen", "0.0.0.0:9091"]),
            "0.0.0.0:9091"
        );
        assert_eq!(args(&[]).unwrap().admin_listen.to_string(), "0.0.0.0:9090");
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (extra, needle) in [
            (&["--poll-timeout", "5s"][..], "--poll-timeout"),
            (
                &["--agent-id-min", "5000", "--agent-id-max", "10"][..],
                "--agent-id-min",
            ),
            (&["--ca-cert", "/nonexistent/ca.pem"][..], "--ca-cert"),
            (&["--event-window", "0"][..], "--event-window"),
            (&["--sign-in-concurrency", "0"][..], "--sign-in-concurrency"),
            (&["--event-budget", "1MiB"][..], "--event-budget"),
            (&["--event-budget", "16MB"][..], "event-budget"),
            (&["--event-max-age", "0s"][..], "--event-max-age"),
            (
                &["--gateway-idle-timeout", "0s"][..],
                "--gateway-idle-timeout",
            ),
            (&["--request-timeout", "soon"][..], "request-timeout"),
            (&["--request-timeout", "5ms"][..], "request-timeout"),
        ] {
            let err = args(extra).unwrap_err();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        for url in ["http://h:1", "https://h:1/agentgateway", "not a url"] {
            let cli = Cli::try_parse_from(["ccgw-bridge", "--gateway-url", url]).unwrap();
            assert!(cli.bridge.validate(None).is_err(), "{url}");
        }
    }
}
