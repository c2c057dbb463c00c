//! `/metrics` as Prometheus and its linter read it: HELP and TYPE for every family, the text
//! format 0.0.4 on request, and normal traffic (a caller's SignOut) counted as no error.

use crate::guid::metric;
use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface};
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Code;

async fn scrape(h: &Harness, accept: Option<&str>) -> (String, String) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://{}/metrics", h.admin));
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, resp.text().await.unwrap())
}

/// Checks what `promtool check metrics` checks for this exposition, plus the format's own
/// rules: every sample belongs to a family with `# HELP` and `# TYPE`, counters end in
/// `_total` (named so in 0.0.4's HELP/TYPE, without the suffix in OpenMetrics), no family twice.
fn lint(text: &str, open_metrics: bool) {
    let mut help = BTreeSet::new();
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has text");
            assert!(!doc.trim().is_empty(), "empty HELP: {line}");
            assert!(help.insert(name.to_owned()), "HELP twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
        }
    }
    assert_eq!(
        help,
        types.keys().cloned().collect(),
        "HELP and TYPE for the same families"
    );
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || ["_total", "_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample without HELP/TYPE: {line}"));
        if types[family] == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter sample ends in _total: {line}"
            );
            assert_eq!(
                family.ends_with("_total"),
                !open_metrics,
                "counter family named as the format wants: {family}"
            );
        }
    }
    assert_eq!(
        text.ends_with("# EOF\n"),
        open_metrics,
        "# EOF only in OpenMetrics"
    );
}

/// Runs `promtool check metrics` on a 0.0.4 exposition when promtool is installed (Debian's
/// `prometheus` package; `.ci/run` installs it where it can), asserting it reports nothing.
fn promtool(text: &str) -> bool {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return false;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}\n{text}"
    );
    true
}

#[tokio::test]
async fn metrics_lint_clean_in_both_formats_and_a_sign_out_is_no_error() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut play = h.play().await;
    play.begin_play(BeginPlayRequest {
        await_outcome: true,
        ..play_request("1001")
    })
    .await
    .unwrap();
    play.stop_play(StopPlayRequest {
        agent_id: "1001".into(),
    })
    .await
    .unwrap();
    expect_code(
        play.begin_play(BeginPlayRequest::default()).await,
        Code::InvalidArgument,
    );
    // The gateway answers the sign-out late, so the held poll is refused (100-006) while the
    // bridge is still signing the agent out: the race a caller's SignOut always runs.
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Logout),
        kind: FaultKind::Latency(Duration::from_millis(1500)),
        count: Some(1),
    });
    h.sessions()
        .await
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
    let refused_poll =
        r#"ccgw_gateway_requests_total{interface="getAgentEvent",retcode="100-006"}"#;
    let started = std::time::Instant::now();
    while metric(&scrape(&h, None).await.1, refused_poll) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the held poll was refused"
        );
        tokio::task::yield_now().await;
    }

    let (ct, text) = scrape(&h, Some("text/plain;version=0.0.4")).await;
    assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
    lint(&text, false);
    let ran_promtool = promtool(&text);
    println!("promtool ran: {ran_promtool}");
    let (ct, om) = scrape(
        &h,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    lint(&om, true);

    assert_eq!(
        metric(&text, "ccgw_poll_errors_total"),
        0.0,
        "a caller's SignOut is no poll error:\n{text}"
    );
}

/// Every bounded label combination of the alert signals exists at 0 from the start (so that
/// `increase()` sees the first burst of errors, which a series born at its first error hides),
/// the process and build metrics are there, and the latency HELP fits stream openings too.
#[tokio::test]
async fn every_bounded_series_exists_from_the_start_with_process_and_build_metrics() {
    let h = Harness::start().await;
    let (_, text) = scrape(&h, None).await;
    let has = |series: &str| {
        text.lines()
            .any(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
    };
    let mut missing = Vec::new();
    for kind in [
        "not_signed_in",
        "sign_in_again",
        "retcode",
        "unreachable",
        "http_status",
        "timeout",
        "bad_answer",
    ] {
        let series = format!(r#"ccgw_poll_errors_total{{kind="{kind}"}}"#);
        if !has(&series) {
            missing.push(series);
        }
    }
    let codes = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    for (kind, service, method) in [
        ("unary", "AgentSessionService", "SignIn"),
        ("unary", "RecordPlayService", "BeginPlay"),
        ("server_stream", "RecordPlayService", "WatchPlayEvents"),
        ("server_stream", "AgentSessionService", "WatchOwnership"),
    ] {
        for code in codes {
            let series = format!(
                r#"ccgw_grpc_server_handled_total{{grpc_type="{kind}",grpc_service="ccgw.v1.{service}",grpc_method="{method}",grpc_code="{code}"}}"#
            );
            if !has(&series) {
                missing.push(series);
            }
        }
    }
    for interface in ["login", "beginPlay", "getAgentEvent", "logout"] {
        for outcome in [
            "unreachable",
            "http_status",
            "timeout",
            "outcome_unknown",
            "not_sent",
        ] {
            let series = format!(
                r#"ccgw_gateway_requests_total{{interface="{interface}",retcode="{outcome}"}}"#
            );
            if !has(&series) {
                missing.push(series);
            }
        }
    }
    assert!(missing.is_empty(), "missing at start: {missing:#?}\n{text}");
    assert_eq!(
        metric(&text, "ccgw_poll_errors_total"),
        0.0,
        "all at 0: {text}"
    );

    // process_* as Prometheus' own client libraries name them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let start = metric(&text, "process_start_time_seconds");
    assert!(
        start > now - 24.0 * 3600.0 && start <= now + 1.0,
        "start time {start} (now {now})"
    );
    assert!(
        metric(&text, "process_resident_memory_bytes") > 1e6,
        "{text}"
    );
    assert!(
        metric(&text, "process_virtual_memory_bytes") > 1e6,
        "{text}"
    );
    assert!(metric(&text, "process_open_fds") >= 3.0, "{text}");
    assert!(
        metric(&text, "process_max_fds") >= metric(&text, "process_open_fds"),
        "{text}"
    );
    assert!(metric(&text, "process_cpu_seconds_total") > 0.0, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("ccgw_build_info{")
            && l.contains(&format!(r#"version="{}""#, env!("CARGO_PKG_VERSION")))
            && l.ends_with(" 1")),
        "{text}"
    );
    let help = text
        .lines()
        .find(|l| l.starts_with("# HELP ccgw_grpc_server_handling_seconds "))
        .expect("latency HELP");
    assert!(
        !help.contains("unary") && help.contains("stream"),
        "the histogram also times stream openings: {help}"
    );
    lint(&text, false);
    promtool(&text);
}

/// The alerting rules (deploy/prometheus) use only metrics the bridge exports: the plain
/// bridge's scrape, or the pool's own registrations (src/pool/metrics.rs).
#[tokio::test]
async fn alert_rules_name_only_exported_metrics() {
    let h = Harness::start().await;
    let (_, text) = scrape(&h, None).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pool = std::fs::read_to_string(root.join("src/pool/metrics.rs")).unwrap();
    let rules =
        std::fs::read_to_string(root.join("deploy/prometheus/ccgw-bridge.rules.yml")).unwrap();
    let mut names = BTreeSet::new();
    let mut rest = rules.as_str();
    while let Some(at) = rest.find("ccgw_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let in_scrape = text
            .lines()
            .any(|l| l.starts_with(&name) && l[name.len()..].starts_with([' ', '{']));
        let bare = name
            .strip_prefix("ccgw_")
            .unwrap()
            .trim_end_matches("_total");
        let in_pool = pool.contains(&format!("\"{bare}\""));
        assert!(
            in_scrape || in_pool,
            "{name} (deploy/prometheus) is exported by neither the bridge nor the pool"
        );
    }
}

/// The `ccgw_grpc_server_*` families carry the label set of go-grpc-prometheus / grpc-ecosystem
/// (`grpc_type`, `grpc_service`, `grpc_method`, and `grpc_code` on the counter), which stock
/// gRPC dashboards query: a unary call and a stream opening, each with its own type and service.
#[tokio::test]
async fn grpc_server_series_carry_type_and_service() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let _stream = h.watch_play("1001").await;
    let (_, text) = scrape(&h, None).await;
    for (series, at_least) in [
        (
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.AgentSessionService",grpc_method="SignIn",grpc_code="OK"}"#,
            1.0,
        ),
        (
            r#"ccgw_grpc_server_handling_seconds_count{grpc_type="unary",grpc_service="ccgw.v1.AgentSessionService",grpc_method="SignIn"}"#,
            1.0,
        ),
        (
            r#"ccgw_grpc_server_handled_total{grpc_type="server_stream",grpc_service="ccgw.v1.RecordPlayService",grpc_method="WatchPlayEvents",grpc_code="OK"}"#,
            1.0,
        ),
        (
            r#"ccgw_grpc_server_handling_seconds_count{grpc_type="server_stream",grpc_service="ccgw.v1.RecordPlayService",grpc_method="WatchPlayEvents"}"#,
            1.0,
        ),
    ] {
        assert!(metric(&text, series) >= at_least, "{series}:\n{text}");
    }
    // Every sample of the two families has both labels (none was left with the old label set).
    for line in text.lines().filter(|l| l.starts_with("ccgw_grpc_server_")) {
        assert!(
            line.contains("grpc_type=\"") && line.contains("grpc_service=\"ccgw.v1."),
            "{line}"
        );
    }
}
