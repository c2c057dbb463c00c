//! The simulator holds a thousand agents' long polls at once and wakes each one by its own event,
//! over a single multiplexed h2 connection and over many HTTP/1.1 connections.

use std::time::{Duration, Instant};

use ccgw_bridge::sim::{SimConfig, Simulator};
use futures::future::join_all;
use serde_json::{json, Value};

const AGENTS: u32 = 1_000;
const BASE: &str = "/agentgateway/resource";

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    guid: Option<&str>,
    body: Option<Value>,
) -> (Option<String>, Value) {
    let mut request = http
        .request(method, url)
        .header("Content-Type", "application/json; charset=UTF-8");
    if let Some(guid) = guid {
        request = request.header("Guid", guid);
    }
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("answer");
    let guid = response
        .headers()
        .get("set-guid")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("JSESSIONID="))
        .map(str::to_owned);
    (guid, response.json().await.expect("JSON"))
}

async fn run(http1: bool) {
    let sim = Simulator::start(
        SimConfig {
            poll_hold: Duration::from_secs(20),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    let mut builder = {
        ccgw_bridge::install_crypto_provider();
        reqwest::Client::builder()
    }
    .tls_certs_only([ca])
    .timeout(Duration::from_secs(30));
    if http1 {
        builder = builder.http1_only();
    }
    let http = builder.build().unwrap();
    let url = |path: String| format!("{}{BASE}{path}", sim.url());
    let ids: Vec<String> = (0..AGENTS).map(|i| (10_000 + i).to_string()).collect();

    let sign_ins = ids.iter().map(|id| {
        let body = json!({"password": "", "phonenum": "1"});
        send(
            &http,
            reqwest::Method::PUT,
            url(format!("/onlineagent/{id}")),
            None,
            Some(body),
        )
    });
    let guids: Vec<String> = join_all(sign_ins)
        .await
        .into_iter()
        .map(|(guid, _)| guid.expect("Set-GUID"))
        .collect();
    // The two sign-in events of every agent.
    for _ in 0..2 {
        let polls = ids.iter().zip(&guids).map(|(id, guid)| {
            send(
                &http,
                reqwest::Method::GET,
                url(format!("/agentevent/{id}")),
                Some(guid),
                None,
            )
        });
        for (_, answer) in join_all(polls).await {
            assert!(answer["event"]["eventType"].is_string(), "{answer}");
        }
    }

    sim.clear_requests();
    let started = Instant::now();
    let polls = ids.iter().zip(&guids).map(|(id, guid)| {
        send(
            &http,
            reqwest::Method::GET,
            url(format!("/agentevent/{id}")),
            Some(guid),
            None,
        )
    });
    let wake_all = async {
        for id in &ids {
            sim.wait_for_request(|r| r.agent_id.as_deref() == Some(id.as_str()))
                .await;
        }
        // Every poll is now held; each agent gets its own event.
        for id in &ids {
            sim.queue_event(
                id,
                json!({"eventType": "Wake", "workNo": id, "content": null}),
            );
        }
    };
    let (answers, ()) = tokio::join!(join_all(polls), wake_all);
    for ((_, answer), id) in answers.iter().zip(&ids) {
        assert_eq!(answer["event"]["workNo"], id.as_str());
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "woken by events, not by the 20 s hold: {:?}",
        started.elapsed()
    );
    let stats = sim.stats();
    assert_eq!(stats.sign_ins, u64::from(AGENTS));
    assert_eq!(stats.polls, 3 * u64::from(AGENTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_held_polls_on_one_h2_connection() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_held_polls_on_http1_connections() {
    run(true).await;
}
