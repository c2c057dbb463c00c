//! The Grafana dashboard (deploy/grafana/ccgw-bridge.json) and the alerting rules
//! (deploy/prometheus) against a real Prometheus (Debian's `prometheus` package, which CI
//! installs for promtool) scraping a pool bridge that serves calls: every panel query parses
//! and returns data, every alert expression parses. A pool bridge, because it exports every
//! family the dashboard shows (the pool's own only exist with a pool), so no panel is exempt.

use super::*;
use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::{BeginPlayRequest, StopPlayRequest, WatchAgentEventsRequest};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Prometheus' default job name for the bridge: the alert rules select on it.
const JOB: &str = "ccgw-bridge";
/// What `$__rate_interval` becomes: four scrape intervals and then some, as Grafana makes it.
const RATE_INTERVAL: &str = "1m";

/// One Prometheus server on loopback, scraping one target every second; killed on drop.
struct Prometheus {
    url: String,
    child: Child,
}

impl Prometheus {
    /// Starts Prometheus on a free port with its TSDB in `dir`, scraping `target` as job
    /// `ccgw-bridge` and loading `rule_files`; returns once it answers `/-/ready`. A port taken
    /// between the pick and the bind (other tests run meanwhile) is retried on another.
    async fn start(dir: &Path, target: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let bin = which("prometheus").unwrap_or_else(|| {
            panic!("`prometheus` is not installed: apt-get install prometheus (Debian's package, which also brings promtool; .ci/run installs it)")
        });
        let rules: Vec<String> = rule_files
            .iter()
            .map(|f| format!("  - {}", f.display()))
            .collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\nscrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules.join("\n")
            ),
        )
        .unwrap();
        let log_path = dir.join("prometheus.log");
        for _ in 0..5 {
            let url = format!("http://127.0.0.1:{}", free_port());
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address={}", &url["http://".len()..]))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("prometheus starts");
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                let ready = reqwest::get(format!("{url}/-/ready")).await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return Prometheus { url, child };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    assert!(
                        log.contains("address already in use"),
                        "prometheus exited with {status}:\n{log}"
                    );
                    break;
                }
                assert!(Instant::now() < until, "prometheus not ready within 60 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus: no free port after 5 tries");
    }

    /// `GET /api/v1/{path}` with `query` parameters; the answer's JSON (errors included: the
    /// caller reads `status` and `error`).
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/v1/{path}", self.url), query)
            .expect("a URL");
        let resp = reqwest::get(url).await.expect("prometheus answers");
        resp.json().await.expect("a JSON answer")
    }

    /// An instant query at the present.
    async fn query(&self, expr: &str) -> Value {
        self.api("query", &[("query", expr)]).await
    }

    /// Waits until the target is up and has been scraped at least `scrapes` times since this
    /// call (told apart by `lastScrape`), polling the targets API: no blind sleep.
    async fn scraped(&self, scrapes: usize) {
        let first = self.last_scrape().await;
        let mut seen = BTreeSet::new();
        let until = Instant::now() + Duration::from_secs(60);
        while seen.len() < scrapes {
            assert!(
                Instant::now() < until,
                "prometheus scrapes the bridge within 60 s"
            );
            if let Some(at) = self
                .last_scrape()
                .await
                .filter(|at| Some(at) != first.as_ref())
            {
                seen.insert(at);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The time of the bridge target's last successful scrape (`None` before one).
    async fn last_scrape(&self) -> Option<String> {
        let targets = self.api("targets", &[("state", "active")]).await;
        let target = targets["data"]["activeTargets"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["labels"]["job"] == JOB))?;
        (target["health"] == "up").then(|| target["lastScrape"].as_str().unwrap_or("").to_owned())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(bin))
            .find(|p| p.is_file())
    })
}

/// One panel query of the dashboard.
struct Target {
    panel: String,
    expr: String,
}

/// Every panel's queries, with the template variables as Grafana substitutes them for one
/// selected instance (a regex-escaped value inside `=~"…"`). Also checks what Grafana needs of
/// every panel: the `$datasource` variable and at least one query.
fn dashboard_targets(dashboard: &Value, instance: &str) -> Vec<Target> {
    let escaped = instance.replace('.', r"\\.");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: panels query the $datasource variable"
        );
        let targets = panel["targets"].as_array().map_or(&[][..], |t| t);
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"))
                .replace("$__rate_interval", RATE_INTERVAL)
                .replace("$job", JOB)
                .replace("$instance", &escaped);
            assert!(
                !expr.contains('$'),
                "{title}: a variable the dashboard does not define: {expr}"
            );
            out.push(Target {
                panel: title.clone(),
                expr,
            });
        }
    }
    out
}

/// Why an instant query's answer is not usable data: an error (a parse error included), or a
/// result with no finite sample (a metric name that does not exist, a label nothing carries).
fn lacks_data(answer: &Value) -> Option<String> {
    if answer["status"] != "success" {
        return Some(format!("{}: {}", answer["errorType"], answer["error"]));
    }
    let result = answer["data"]["result"].as_array().map_or(&[][..], |r| r);
    let finite = result.iter().any(|series| {
        series["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    });
    (!finite).then(|| format!("no finite sample in {} series", result.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_and_alert_expression_evaluates_against_a_real_prometheus() {
    let started = Instant::now();
    ccgw_bridge::crypto::install_crypto_provider();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/ccgw-bridge.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let rules_file = root.join("deploy/prometheus/ccgw-bridge.rules.yml");

    let agents = agents_for(&["dash"], 2);
    let p = pool(&agents, 1).await;
    let bridge = Bridge::start(&p.setup, "dash");
    let prometheus = Prometheus::start(
        &p.setup.dir,
        bridge.admin,
        std::slice::from_ref(&rules_file),
    )
    .await;
    wait_until(SETTLE, "the bridge holds its agents", || async {
        bridge.held().await == set(&agents)
    })
    .await;
    prometheus.scraped(1).await;

    // Traffic every panel shows: unary calls, an error, a stream open (a watcher), a play's
    // events, gateway exchanges and polls.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", bridge.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut play = RecordPlayServiceClient::new(channel.clone());
    let mut watch = bridge
        .client()
        .await
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: agents[0].clone(),
            ..Default::default()
        })
        .await
        .expect("watch opens")
        .into_inner();
    play.begin_play(BeginPlayRequest {
        agent_id: agents[0].clone(),
        voice_path: "/prompts/welcome.wav".into(),
        await_outcome: true,
        ..Default::default()
    })
    .await
    .expect("BeginPlay");
    play.stop_play(StopPlayRequest {
        agent_id: agents[0].clone(),
    })
    .await
    .expect("StopPlay");
    let refused = play.begin_play(BeginPlayRequest::default()).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::InvalidArgument);
    let event = tokio::time::timeout(SETTLE, watch.message()).await;
    assert!(matches!(event, Ok(Ok(Some(_)))), "an event: {event:?}");
    // Two scrapes after the calls, so every rate() has an increase inside its window.
    prometheus.scraped(2).await;

    // The template variables' own queries (Grafana's label_values(selector, label)) find the
    // bridge.
    let instance = bridge.admin.to_string();
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let args = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: {q}", var["name"]));
        let (selector, label) = args.rsplit_once(',').unwrap();
        let selector = selector.replace("$job", JOB);
        let values = prometheus
            .api(
                &format!("label/{}/values", label.trim()),
                &[("match[]", &selector)],
            )
            .await;
        let want = if label.trim() == "job" {
            JOB
        } else {
            &instance
        };
        assert!(
            values["data"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v == want)),
            "variable {}: {q} gives {values}",
            var["name"]
        );
    }

    // Every panel query returns data at some point (polled: the calls' increase must reach a
    // rate window, and a slow machine may scrape late); a parse error fails at once.
    let targets = dashboard_targets(&dashboard, &instance);
    assert!(targets.len() >= 30, "{} panel queries", targets.len());
    let mut pending: Vec<(&Target, String)> = targets.iter().map(|t| (t, String::new())).collect();
    let until = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() && Instant::now() < until {
        let mut still = Vec::new();
        for (t, _) in pending {
            let answer = prometheus.query(&t.expr).await;
            assert_eq!(
                answer["status"], "success",
                "panel {:?} does not parse: {}\n{answer}",
                t.panel, t.expr
            );
            if let Some(why) = lacks_data(&answer) {
                still.push((t, why));
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let missing: Vec<String> = pending
        .iter()
        .map(|(t, why)| format!("{:?}: {} ({why})", t.panel, t.expr))
        .collect();
    assert!(
        missing.is_empty(),
        "panels that never had data within 60 s:\n{}",
        missing.join("\n")
    );

    // Every alert expression, as Prometheus loaded it from the rules file, evaluates.
    let rules = prometheus.api("rules", &[("type", "alert")]).await;
    let loaded: Vec<(String, String)> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["query"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let in_file = std::fs::read_to_string(&rules_file)
        .unwrap()
        .matches("- alert: ")
        .count();
    assert_eq!(loaded.len(), in_file, "every alert of the file loaded");
    for (name, expr) in &loaded {
        let answer = prometheus.query(expr).await;
        assert_eq!(answer["status"], "success", "{name}: {expr}\n{answer}");
    }
    eprintln!(
        "figure: {} panel queries with data, {} alert expressions evaluated, in {:?}",
        targets.len(),
        loaded.len(),
        started.elapsed()
    );
    drop(watch);
}
