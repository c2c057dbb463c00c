//! Logs and Prometheus metrics.
//!
//! Metric labels are bounded by construction: method and interface names are static, retcodes
//! are interned through the retcode table (unknown ones become `other`), and no label ever holds
//! an agent password or Guid.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

mod process;

use crate::version;

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];

/// Why the event budget dropped retained events early (`ccgw_events_evicted_total{cause}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionCause {
    /// The bridge-wide byte budget was exceeded.
    Budget,
    /// Older than the age bound.
    Age,
}

impl EvictionCause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            EvictionCause::Budget => "budget",
            EvictionCause::Age => "age",
        }
    }
}

/// A gRPC method as the `ccgw_grpc_server_*` families label it: the label set of
/// go-grpc-prometheus / grpc-ecosystem (`grpc_type`, `grpc_service`, `grpc_method`, plus
/// `grpc_code` on the counter), which stock gRPC dashboards query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rpc {
    method: &'static str,
    /// The fully qualified service, as in the request path.
    service: &'static str,
    /// `unary` or `server_stream` (the only kinds `ccgw.v1` has).
    kind: &'static str,
}

const RECORD_PLAY: &str = crate::proto::server::record_play_service_server::SERVICE_NAME;
const AGENT_SESSION: &str = crate::proto::server::agent_session_service_server::SERVICE_NAME;

const fn unary(service: &'static str, method: &'static str) -> Rpc {
    Rpc {
        method,
        service,
        kind: "unary",
    }
}

const fn server_stream(service: &'static str, method: &'static str) -> Rpc {
    Rpc {
        method,
        service,
        kind: "server_stream",
    }
}

/// Every gRPC method of `ccgw.v1`: their series are resolved once at start.
const RPC_METHODS: [Rpc; 13] = [
    unary(AGENT_SESSION, "SignIn"),
    unary(AGENT_SESSION, "SignOut"),
    unary(AGENT_SESSION, "GetSession"),
    unary(AGENT_SESSION, "ListSessions"),
    unary(RECORD_PLAY, "BeginPlay"),
    unary(RECORD_PLAY, "StopPlay"),
    unary(RECORD_PLAY, "PausePlay"),
    unary(RECORD_PLAY, "ResumePlay"),
    unary(RECORD_PLAY, "FastForward"),
    unary(RECORD_PLAY, "Rewind"),
    server_stream(AGENT_SESSION, "WatchAgentEvents"),
    server_stream(RECORD_PLAY, "WatchPlayEvents"),
    server_stream(AGENT_SESSION, "WatchOwnership"),
];

type RpcLabels = [(&'static str, &'static str); 4];
type RpcTimeLabels = [(&'static str, &'static str); 3];

impl Rpc {
    /// The method's entry (a name missing from the table, which a test would have to make up,
    /// is labelled service `unknown`).
    fn of(method: &'static str) -> Rpc {
        RPC_METHODS
            .into_iter()
            .find(|r| r.method == method)
            .unwrap_or(unary("unknown", method))
    }

    fn time_labels(self) -> RpcTimeLabels {
        [
            ("grpc_type", self.kind),
            ("grpc_service", self.service),
            ("grpc_method", self.method),
        ]
    }

    fn labels(self, code: &'static str) -> RpcLabels {
        let [kind, service, method] = self.time_labels();
        [kind, service, method, ("grpc_code", code)]
    }
}

/// Every kind of failed event poll (`ccgw_poll_errors_total{kind}`), created at 0 at start so
/// that `increase()` sees the first burst (a series born at its first error hides it).
pub const POLL_ERROR_KINDS: [&str; 7] = [
    "not_signed_in",
    "sign_in_again",
    "retcode",
    "unreachable",
    "http_status",
    "timeout",
    "bad_answer",
];

/// Every outcome of a push callback (`ccgw_callbacks_total{outcome}`), created at 0 at start.
pub const CALLBACK_OUTCOMES: [&str; 11] = [
    "accepted",
    "wrong_token",
    "wrong_guid",
    "unknown_agent",
    "wrong_work_no",
    "malformed",
    "too_large",
    "timeout",
    "not_found",
    "wrong_method",
    "session_ended",
];

/// The gateway transport outcomes of `ccgw_gateway_requests_total{retcode}`, created at 0 for
/// every interface at start (retcodes are the gateway's answers, created when seen).
pub const GATEWAY_TRANSPORT_OUTCOMES: [&str; 5] = [
    "unreachable",
    "http_status",
    "timeout",
    "outcome_unknown",
    "not_sent",
];

/// A status code's canonical upper-case name (as grpcurl prints it); also the metrics label.
pub fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The series one call or poll updates in the common case (a success), resolved once so the
/// hot path increments atomics instead of hashing labels under the family's lock.
struct Resolved {
    /// The label value (method or interface).
    name: &'static str,
    /// The counter of the success outcome (`OK` / retcode `0`).
    ok: Counter,
    /// The latency histogram.
    seconds: Histogram,
}

impl Resolved {
    fn table(
        names: &[&'static str],
        label: &'static str,
        outcome: (&'static str, &'static str),
        total: &Family<Labels2, Counter>,
        seconds: &Family<Labels1, Histogram>,
    ) -> Vec<Resolved> {
        names
            .iter()
            .map(|&name| Resolved {
                name,
                ok: total.get_or_create(&[(label, name), outcome]).clone(),
                seconds: seconds.get_or_create(&[(label, name)]).clone(),
            })
            .collect()
    }

    fn find<'a>(table: &'a [Resolved], name: &str) -> Option<&'a Resolved> {
        table.iter().find(|r| r.name == name)
    }
}

/// Every metric the bridge exports, registered once at start.
pub struct Metrics {
    /// Parts built later (the agent pool) register their own metrics here
    /// ([`Metrics::register`]); a scrape locks it briefly.
    registry: std::sync::Mutex<Registry>,
    /// `process_*`, named as Prometheus' client libraries name them (no `ccgw_` prefix).
    process: Registry,
    rpc_total: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcTimeLabels, Histogram>,
    gateway_total: Family<Labels2, Counter>,
    gateway_seconds: Family<Labels1, Histogram>,
    sessions: Family<Labels1, Gauge>,
    guid_adoptions: Counter,
    resign_ins: Counter,
    poll_errors: Family<Labels1, Counter>,
    callbacks: Family<Labels1, Counter>,
    watchers: Gauge,
    events_received: Counter,
    events_delivered: Counter,
    watcher_overruns: Counter,
    retained_event_bytes: Gauge,
    retained_event_budget: Gauge,
    /// `events_evicted{cause}` resolved once per cause (no label lookup per eviction).
    evicted_by_budget: Counter,
    evicted_by_age: Counter,
    ready: Gauge,
    /// Pre-resolved series of every gRPC method.
    rpc_resolved: Vec<Resolved>,
    /// Pre-resolved series of every gateway interface.
    gateway_resolved: Vec<Resolved>,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~27 s: covers a loopback call and a held long poll.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ccgw");
        let rpc_total = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<RpcTimeLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        let gateway_total = Family::<Labels2, Counter>::default();
        let gateway_seconds =
            Family::<Labels1, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let sessions = Family::<Labels1, Gauge>::default();
        let guid_adoptions = Counter::default();
        let resign_ins = Counter::default();
        let poll_errors = Family::<Labels1, Counter>::default();
        let callbacks = Family::<Labels1, Counter>::default();
        let watchers = Gauge::default();
        let events_received = Counter::default();
        let events_delivered = Counter::default();
        let watcher_overruns = Counter::default();
        let ready = Gauge::default();
        let retained_event_bytes = Gauge::default();
        let retained_event_budget = Gauge::default();
        let events_evicted = Family::<Labels1, Counter>::default();
        let evicted_by_budget = events_evicted
            .get_or_create(&[("cause", EvictionCause::Budget.label())])
            .clone();
        let evicted_by_age = events_evicted
            .get_or_create(&[("cause", EvictionCause::Age.label())])
            .clone();
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by type, service, method and status code",
            rpc_total.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "gRPC call latency, by type, service and method (for Watch* streams: the time to open the stream)",
            rpc_seconds.clone(),
        );
        registry.register(
            "gateway_requests",
            "CC-Gateway requests, by interface and retcode (or transport outcome)",
            gateway_total.clone(),
        );
        registry.register(
            "gateway_request_seconds",
            "CC-Gateway request latency, by interface",
            gateway_seconds.clone(),
        );
        registry.register(
            "sessions",
            "Agent sessions held, by state",
            sessions.clone(),
        );
        registry.register(
            "guid_adoptions",
            "New Guids adopted from Set-GUID headers",
            guid_adoptions.clone(),
        );
        registry.register(
            "resign_ins",
            "Sign-ins the bridge made by itself with held credentials",
            resign_ins.clone(),
        );
        registry.register(
            "poll_errors",
            "Failed event polls, by kind",
            poll_errors.clone(),
        );
        registry.register(
            "callbacks",
            "Push-mode callbacks from the gateway, by outcome (accepted, or why refused)",
            callbacks.clone(),
        );
        registry.register("watchers", "Open event streams", watchers.clone());
        registry.register(
            "events_received",
            "Agent events received from the gateway",
            events_received.clone(),
        );
        registry.register(
            "events_delivered",
            "Events sent to watchers (one per watcher per event)",
            events_delivered.clone(),
        );
        registry.register(
            "watcher_overruns",
            "Watchers ended because they fell behind the retained window",
            watcher_overruns.clone(),
        );
        registry.register(
            "retained_event_bytes",
            "Bytes of events retained for resuming watchers, as the event budget charges them (an upper bound)",
            retained_event_bytes.clone(),
        );
        registry.register(
            "retained_event_budget_bytes",
            "The bridge-wide byte budget of retained events (--event-budget)",
            retained_event_budget.clone(),
        );
        registry.register(
            "events_evicted",
            "Retained events dropped before their session's window was full, by cause (budget: --event-budget exceeded; age: older than --event-max-age)",
            events_evicted,
        );
        registry.register(
            "ready",
            "1 while the bridge is ready (the gateway answers and no pinned agent is down), else 0",
            ready.clone(),
        );
        let build_info = Family::<[(&'static str, &'static str); 3], Gauge>::default();
        build_info
            .get_or_create(&[
                ("version", version::VERSION),
                ("features", version::FEATURES),
                ("commit", version::COMMIT),
            ])
            .set(1);
        registry.register(
            "build_info",
            "Always 1: the bridge's version, cargo features and commit, as labels (as --version prints them)",
            build_info,
        );
        // Every bounded label combination of the alert signals exists from the start, at 0.
        for kind in POLL_ERROR_KINDS {
            let _ = poll_errors.get_or_create(&[("kind", kind)]);
        }
        for outcome in CALLBACK_OUTCOMES {
            let _ = callbacks.get_or_create(&[("outcome", outcome)]);
        }
        for rpc in RPC_METHODS {
            // Every status code, created at 0 for every method at start.
            for code in (0..=16).map(|c| code_label(tonic::Code::from_i32(c))) {
                let _ = rpc_total.get_or_create(&rpc.labels(code));
            }
        }
        for interface in crate::gateway::Interface::ALL.map(crate::gateway::Interface::name) {
            for outcome in GATEWAY_TRANSPORT_OUTCOMES {
                let _ =
                    gateway_total.get_or_create(&[("interface", interface), ("retcode", outcome)]);
            }
        }
        let mut process = Registry::default();
        process::register(&mut process);
        let rpc_resolved = RPC_METHODS
            .iter()
            .map(|rpc| Resolved {
                name: rpc.method,
                ok: rpc_total.get_or_create(&rpc.labels("OK")).clone(),
                seconds: rpc_seconds.get_or_create(&rpc.time_labels()).clone(),
            })
            .collect();
        let gateway_resolved = Resolved::table(
            &crate::gateway::Interface::ALL.map(crate::gateway::Interface::name),
            "interface",
            ("retcode", "0"),
            &gateway_total,
            &gateway_seconds,
        );
        Self {
            rpc_resolved,
            gateway_resolved,
            registry: std::sync::Mutex::new(registry),
            process,
            rpc_total,
            rpc_seconds,
            gateway_total,
            gateway_seconds,
            sessions,
            guid_adoptions,
            resign_ins,
            poll_errors,
            callbacks,
            watchers,
            events_received,
            events_delivered,
            watcher_overruns,
            retained_event_bytes,
            retained_event_budget,
            evicted_by_budget,
            evicted_by_age,
            ready,
        }
    }
}

impl Metrics {
    /// Records one finished gRPC call.
    pub fn rpc(&self, method: &'static str, code: &'static str, elapsed: Option<Duration>) {
        let resolved = Resolved::find(&self.rpc_resolved, method);
        match resolved {
            Some(r) if code == "OK" => {
                r.ok.inc();
            }
            _ => {
                self.rpc_total
                    .get_or_create(&Rpc::of(method).labels(code))
                    .inc();
            }
        }
        if let Some(elapsed) = elapsed {
            match resolved {
                Some(r) => r.seconds.observe(elapsed.as_secs_f64()),
                None => self
                    .rpc_seconds
                    .get_or_create(&Rpc::of(method).time_labels())
                    .observe(elapsed.as_secs_f64()),
            }
        }
    }

    /// Records one gateway exchange.
    pub fn gateway_request(
        &self,
        interface: &'static str,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let resolved = Resolved::find(&self.gateway_resolved, interface);
        match resolved {
            Some(r) if outcome == "0" => {
                r.ok.inc();
            }
            _ => {
                self.gateway_total
                    .get_or_create(&[("interface", interface), ("retcode", outcome)])
                    .inc();
            }
        }
        match resolved {
            Some(r) => r.seconds.observe(elapsed.as_secs_f64()),
            None => self
                .gateway_seconds
                .get_or_create(&[("interface", interface)])
                .observe(elapsed.as_secs_f64()),
        }
    }

    /// Sets the per-state session gauge (counted from the registry when scraped, so it
    /// cannot drift from what the bridge holds).
    pub fn set_sessions(&self, counts: &[(&'static str, i64)]) {
        for (state, n) in counts {
            self.sessions.get_or_create(&[("state", state)]).set(*n);
        }
    }

    /// A `Set-GUID` brought a new Guid.
    pub fn guid_adopted(&self) {
        self.guid_adoptions.inc();
    }

    /// The bridge signed an agent in again by itself.
    pub fn resigned_in(&self) {
        self.resign_ins.inc();
    }

    /// A poll failed (`kind` is a static outcome label).
    pub fn poll_error(&self, kind: &'static str) {
        debug_assert!(
            POLL_ERROR_KINDS.contains(&kind),
            "poll error kind {kind:?} missing from POLL_ERROR_KINDS (created at start)"
        );
        self.poll_errors.get_or_create(&[("kind", kind)]).inc();
    }

    /// A push callback was answered (`outcome`: one of [`CALLBACK_OUTCOMES`]).
    pub fn callback(&self, outcome: &'static str) {
        debug_assert!(
            CALLBACK_OUTCOMES.contains(&outcome),
            "callback outcome {outcome:?} missing from CALLBACK_OUTCOMES"
        );
        self.callbacks.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// A watcher stream opened (+1) or closed (-1).
    pub fn watchers_add(&self, delta: i64) {
        self.watchers.inc_by(delta);
    }

    /// An event arrived from the gateway.
    pub fn event_received(&self) {
        self.events_received.inc();
    }

    /// An event was handed to one watcher.
    pub fn event_delivered(&self) {
        self.events_delivered.inc();
    }

    /// Readiness changed.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// A watcher fell out of the retained window.
    pub fn watcher_overrun(&self) {
        self.watcher_overruns.inc();
    }

    /// Bytes the event budget charges now (set under its lock on every change).
    pub fn set_retained_event_bytes(&self, bytes: usize) {
        self.retained_event_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The configured `--event-budget`.
    pub fn set_retained_event_budget(&self, bytes: usize) {
        self.retained_event_budget
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Counts `events` retained events dropped early for `cause`.
    pub fn events_evicted(&self, cause: EvictionCause, events: u64) {
        if events > 0 {
            match cause {
                EvictionCause::Budget => self.evicted_by_budget.inc_by(events),
                EvictionCause::Age => self.evicted_by_age.inc_by(events),
            };
        }
    }

    /// Lets a part of the bridge configured later (the agent pool) register its own metrics
    /// beside these, so that telemetry depends on no part above it.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The OpenMetrics 1.0 text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 * 1024);
        // Writing to a String cannot fail.
        let _ = encode_registry(
            &mut out,
            &self.registry.lock().unwrap_or_else(|p| p.into_inner()),
        );
        let _ = encode_registry(&mut out, &self.process);
        let _ = encode_eof(&mut out);
        in_label_order(&out)
    }

    /// The exposition in `format`.
    pub fn render_as(&self, format: Exposition) -> String {
        match format {
            Exposition::OpenMetrics => self.render(),
            Exposition::Text004 => to_text_004(&self.render()),
        }
    }
}

/// `text` with each family's series in label order, so two scrapes can be diffed line by line:
/// prometheus-client keeps a family's children in a hash map, whose order differs between
/// processes. One child's own lines (a histogram's sum, count and ascending buckets) share a key
/// and keep their order; the sort is stable.
fn in_label_order(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut family: Vec<&str> = Vec::new();
    let flush = |family: &mut Vec<&str>, out: &mut String| {
        family.sort_by_cached_key(|line| series_key(line));
        for line in family.drain(..) {
            out.push_str(line);
            out.push('\n');
        }
    };
    for line in text.lines() {
        if line.starts_with('#') {
            flush(&mut family, &mut out);
            out.push_str(line);
            out.push('\n');
        } else {
            family.push(line);
        }
    }
    flush(&mut family, &mut out);
    out
}

/// A sample line's labels without `le`: what orders the series and keeps a histogram's lines
/// together. (The bridge's label values hold no `,` or `}`.)
fn series_key(line: &str) -> String {
    let labels = line
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map_or("", |(labels, _)| labels);
    let kept: Vec<&str> = labels
        .split(',')
        .filter(|kv| !kv.starts_with("le="))
        .collect();
    kept.join(",")
}

/// The two exposition formats `/metrics` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4 (what `promtool check metrics` and older scrapers read).
    Text004,
}

impl Exposition {
    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Text004 => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format a scraper's `Accept` header prefers: OpenMetrics when it is acceptable with
    /// at least the quality of text/plain, else text 0.0.4 (also without an `Accept`, as the
    /// Prometheus text format is the lowest common denominator of scrapers and tools).
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else {
            return Exposition::Text004;
        };
        let mut open_metrics = 0.0f32;
        let mut text = 0.0f32;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open_metrics > 0.0 && open_metrics >= text {
            Exposition::OpenMetrics
        } else {
            Exposition::Text004
        }
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: a counter family `x` is named after its
/// sample `x_total` in `# HELP`/`# TYPE` (the 0.0.4 convention, which `promtool` checks),
/// `# UNIT` lines and the final `# EOF` are dropped. Everything else (gauges, histograms,
/// labels, values) is the same in both formats.
fn to_text_004(open_metrics: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for line in open_metrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.push(name);
        }
    }
    let mut out = String::with_capacity(open_metrics.len() + 16 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(&name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hot path's pre-resolved handles update the very series `/metrics` exports, and
    /// outcomes or names without a handle still land in their own series.
    #[test]
    fn pre_resolved_series_are_the_exported_ones() {
        let m = Metrics::default();
        let ms = Some(Duration::from_millis(1));
        m.rpc("BeginPlay", "OK", ms);
        m.rpc("BeginPlay", "OK", ms);
        m.rpc("BeginPlay", "UNAVAILABLE", ms);
        m.rpc("NotAMethod", "OK", ms);
        m.gateway_request("getAgentEvent", "0", Duration::from_millis(1));
        m.gateway_request("getAgentEvent", "timeout", Duration::from_millis(1));
        m.gateway_request("notAnInterface", "0", Duration::from_millis(1));
        let text = m.render();
        for line in [
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="BeginPlay",grpc_code="OK"} 2"#,
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="BeginPlay",grpc_code="UNAVAILABLE"} 1"#,
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="unknown",grpc_method="NotAMethod",grpc_code="OK"} 1"#,
            r#"ccgw_grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="BeginPlay"} 3"#,
            r#"ccgw_grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="unknown",grpc_method="NotAMethod"} 1"#,
            r#"ccgw_gateway_requests_total{interface="getAgentEvent",retcode="0"} 1"#,
            r#"ccgw_gateway_requests_total{interface="getAgentEvent",retcode="timeout"} 1"#,
            r#"ccgw_gateway_requests_total{interface="notAnInterface",retcode="0"} 1"#,
            r#"ccgw_gateway_request_seconds_count{interface="getAgentEvent"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
    }

    /// Two scrapes can be diffed line by line: every family's series come in label order
    /// (the metrics library keeps a family's children in a hash map, whose order differs
    /// between processes), and a histogram's own lines stay together with its buckets ascending.
    #[test]
    fn series_come_in_label_order() {
        let m = Metrics::default();
        for method in ["WatchPlayEvents", "BeginPlay", "SignIn", "Rewind"] {
            m.rpc(method, "INTERNAL", Some(Duration::from_millis(2)));
        }
        let text = m.render();
        let labels = |prefix: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(|l| l.split_once('{').map_or("", |(_, rest)| rest).to_owned())
                .collect()
        };
        for family in [
            "ccgw_grpc_server_handled_total{",
            "ccgw_gateway_requests_total{",
            "ccgw_grpc_server_handling_seconds_count{",
        ] {
            let series = labels(family);
            let mut sorted = series.clone();
            sorted.sort();
            assert!(series.len() > 3, "{family}");
            assert_eq!(series, sorted, "{family} out of order");
        }
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with("ccgw_grpc_server_handling_seconds_bucket{")
                    && l.contains("grpc_method=\"BeginPlay\"")
            })
            .map(|l| {
                let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
                le.parse().unwrap_or(f64::INFINITY)
            })
            .collect();
        assert!(
            buckets.len() > 10 && buckets.windows(2).all(|w| w[0] < w[1]),
            "{buckets:?}"
        );
    }

    /// Every gateway interface has pre-resolved handles (a new one added to the interface table
    /// but not here would silently take the slow path).
    #[test]
    fn every_gateway_interface_is_pre_resolved() {
        use crate::gateway::Interface::*;
        let metrics = Metrics::default();
        for iface in [
            Login,
            ForceLogin,
            Logout,
            Poll,
            BeginPlay,
            StopPlay,
            PausePlay,
            ResumePlay,
            FastForward(1),
            Rewind(1),
        ] {
            assert!(
                Resolved::find(&metrics.gateway_resolved, iface.name()).is_some(),
                "{iface:?}"
            );
        }
    }

    #[test]
    fn text_004_names_counters_after_their_samples() {
        let om = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total{k=\"v\"} 1\n# HELP a_g G.\n# TYPE a_g gauge\na_g 2\n# EOF\n";
        assert_eq!(
            to_text_004(om),
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total{k=\"v\"} 1\n# HELP a_g G.\n# TYPE a_g gauge\na_g 2\n"
        );
    }

    #[test]
    fn the_scraper_chooses_the_format() {
        use Exposition::*;
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Exposition::negotiate(Some(prometheus)), OpenMetrics);
        assert_eq!(
            Exposition::negotiate(Some("text/plain;version=0.0.4")),
            Text004
        );
        assert_eq!(
            Exposition::negotiate(Some(
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"
            )),
            Text004
        );
        assert_eq!(Exposition::negotiate(Some("*/*")), Text004);
        assert_eq!(Exposition::negotiate(None), Text004);
        assert_eq!(
            Exposition::negotiate(Some("application/openmetrics-text")),
            OpenMetrics
        );
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("--otlp-endpoint: {0}")]
    Otlp(String),
}

/// The gateway client reports into the registry through this trait (it does not know the
/// registry: dependencies point from telemetry down to the gateway, not back).
impl crate::gateway::Observer for Metrics {
    fn gateway_request(&self, interface: &'static str, outcome: &'static str, elapsed: Duration) {
        Metrics::gateway_request(self, interface, outcome, elapsed);
    }

    fn guid_adopted(&self) {
        Metrics::guid_adopted(self);
    }
}

/// Keeps the OTLP pipeline alive; [`TelemetryGuard::shutdown`] flushes spans still buffered.
#[must_use = "dropping the guard without shutdown() loses buffered spans"]
pub struct TelemetryGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl TelemetryGuard {
    /// Flushes and stops the exporter (bounded by the SDK's own export timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.0 {
            let _ = provider.shutdown();
        }
    }
}

/// Logs without `RUST_LOG`: the bridge's own at INFO, dependencies' only at WARN and above.
/// rustls-platform-verifier logs every refused certificate as an ERROR, once per connection
/// attempt; readiness reports the same failure once, with a hint (`--ca-cert`), so it is off.
pub const DEFAULT_LOG_FILTER: &str = "warn,ccgw_bridge=info,rustls_platform_verifier=off";

static OTEL_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the global subscriber: `RUST_LOG`-style filtering (default `info`), text or JSON
/// logs on stderr, and, when `otlp_endpoint` is given, spans exported over OTLP/gRPC with W3C
/// trace context taken from callers' metadata.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Each layer filters for itself, so the per-call debug spans cost nothing unless the
    // exporter (below) or RUST_LOG asks for them.
    let fmt = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
    };
    let (otel, provider) = match otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            use opentelemetry::trace::TracerProvider as _;
            use opentelemetry_otlp::WithExportConfig;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("ccgw-bridge")
                        .build(),
                )
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            OTEL_ENABLED.store(true, std::sync::atomic::Ordering::Release);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("ccgw-bridge"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("ccgw_bridge", tracing::Level::DEBUG),
                );
            (Some(layer), Some(provider))
        }
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(TelemetryGuard(provider))
}

struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Makes `span` a child of the caller's trace (`traceparent` metadata), when exporting.
pub fn adopt_remote_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if OTEL_ENABLED.load(std::sync::atomic::Ordering::Acquire) {
        let parent =
            opentelemetry::global::get_text_map_propagator(|p| p.extract(&Metadata(metadata)));
        let _ = span.set_parent(parent);
    }
}
