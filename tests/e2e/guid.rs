//! The Guid lifecycle: adoption from polls, rotation storms, re-sign-in, forced sign-out.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{AuthMode, SimConfig};
use std::time::Duration;
use tonic::Code;

const POLL: &str = "/agentgateway/resource/agentevent/";

fn dynamic(rotate_every: Duration, strict: bool) -> SimConfig {
    SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every,
            strict,
            overlap: if strict { Duration::ZERO } else { rotate_every },
        },
        ..fast_sim()
    }
}

async fn until_type(w: &mut tonic::Streaming<PlayEvent>, t: PlayEventType) -> PlayEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type == t as i32 {
            return e;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rotation_every_200ms_loses_no_call() {
    let h = Harness::with(dynamic(Duration::from_millis(200), true), |_| {}).await;
    const AGENTS: usize = 10;
    const CYCLES: usize = 25; // 10 agents × 25 × (play + stop) = 500 calls
    let mut tasks = Vec::new();
    for a in 0..AGENTS {
        let agent = format!("{}", 2001 + a);
        h.sign_in(&agent).await;
        let mut play = h.play().await;
        let mut w = h.watch_play(&agent).await;
        tasks.push(tokio::spawn(async move {
            // Paced over ~5 s so that ~25 rotations happen while calls are in flight.
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut ok = 0;
            for _ in 0..CYCLES {
                tick.tick().await;
                play.begin_play(BeginPlayRequest {
                    agent_id: agent.clone(),
                    voice_path: "/prompts/a.wav".into(),
                    await_outcome: true,
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("BeginPlay for {agent}: {s:?}"))?;
                play.stop_play(StopPlayRequest {
                    agent_id: agent.clone(),
                })
                .await
                .map_err(|s| format!("StopPlay for {agent}: {s:?}"))?;
                until_type(&mut w, PlayEventType::PlayStopped).await;
                ok += 2;
            }
            Ok::<usize, String>(ok)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().unwrap();
    }
    assert_eq!(total, 500);
    let text = reqwest_metrics(&h).await;
    let adoptions = metric(&text, "ccgw_guid_adoptions_total");
    assert!(
        adoptions >= 150.0,
        "Guids really rotated under load: {adoptions}"
    );
}

/// Scrapes the admin listener.
pub async fn reqwest_metrics(h: &Harness) -> String {
    reqwest::get(format!("http://{}/metrics", h.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of every sample of `name` (all label sets).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_rotated_guid_is_used_by_the_next_call() {
    let h = Harness::with(dynamic(Duration::from_secs(3600), false), |_| {}).await;
    h.sign_in("1001").await;
    let first = h.sim.current_guid("1001").unwrap();
    h.sim.rotate_guid("1001");
    // The held poll is answered with Set-GUID; the next poll already carries the new Guid.
    let old = first.clone();
    let poll = h
        .sim
        .wait_for_request(move |r| {
            r.path.starts_with(POLL) && r.header("guid").is_some_and(|g| g != old)
        })
        .await;
    let second = h.sim.current_guid("1001").unwrap();
    assert_ne!(first, second);
    assert_eq!(poll.header("guid"), Some(second.as_str()));
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .unwrap();
    let play = h
        .sim
        .wait_for_request(|r| r.path.ends_with("/recordplay/1001/play"))
        .await;
    assert_eq!(play.header("guid"), Some(second.as_str()));
}

#[tokio::test]
async fn set_guid_attributes_are_cut_off() {
    let h = Harness::with(
        SimConfig {
            set_guid_attributes: true,
            ..fast_sim()
        },
        |_| {},
    )
    .await;
    h.sign_in("1001").await;
    let guid = h.sim.current_guid("1001").unwrap();
    let poll = h.sim.wait_for_request(|r| r.path.starts_with(POLL)).await;
    assert_eq!(poll.header("guid"), Some(guid.as_str()));
    assert!(!guid.contains(';'));
}

#[tokio::test]
async fn forced_sign_out_then_the_next_call_signs_in_again() {
    let h = Harness::start().await;
    let first = h.sign_in("1001").await;
    let mut w = h.watch_play("1001").await;
    h.sim.force_sign_out("1001");
    let status = loop {
        match w.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("forced sign-out must not end the stream OK"),
            Err(s) => break s,
        }
    };
    assert_eq!(reason(&status), "SESSION_ENDED");
    let s = h.session("1001").await;
    assert_eq!(s.state, SessionState::Ended as i32);
    assert!(s.can_resign_in);
    let text = reqwest_metrics(&h).await;
    assert_eq!(
        metric(&text, r#"ccgw_sessions{state="ended"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, r#"ccgw_sessions{state="signed_in"}"#), 0.0);

    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("the call signs the agent in again and succeeds");
    assert!(h.sim.signed_in("1001"));
    let s = h.session("1001").await;
    assert_eq!(s.state, SessionState::SignedIn as i32);
    assert_ne!(
        s.session_id, first.session_id,
        "a new session, sequences restart"
    );
    assert_eq!(
        metric(&reqwest_metrics(&h).await, "ccgw_resign_ins_total"),
        1.0
    );
}

#[tokio::test]
async fn without_held_credentials_a_forced_sign_out_is_final() {
    let h = Harness::with(fast_sim(), |c| c.sessions.hold_credentials = false).await;
    h.sign_in("1001").await;
    let mut w = h.watch_play("1001").await;
    h.sim.force_sign_out("1001");
    while let Ok(Some(_)) = w.message().await {}
    let status = expect_code(
        h.play()
            .await
            .stop_play(StopPlayRequest {
                agent_id: "1001".into(),
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "AGENT_NOT_SIGNED_IN");
    assert!(status.message().contains("1001"), "{status:?}");
}

#[tokio::test]
async fn a_call_refused_for_its_guid_signs_in_again_and_is_retried_once() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    // Silently gone at the gateway; the bridge finds out from the call itself.
    h.sim.kill_session("1001");
    h.sim.clear_requests();
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("retried after a new sign-in");
    let reqs = h.sim.requests();
    let plays = reqs.iter().filter(|r| r.path.ends_with("/play")).count();
    let logins = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/onlineagent/1001"))
        .count();
    assert_eq!(
        (plays, logins),
        (2, 1),
        "refused once, one sign-in, one retry"
    );
}

#[tokio::test]
async fn concurrent_sign_ins_for_one_agent_make_one_login() {
    let h = Harness::start().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let mut c = h.sessions().await;
        calls.push(tokio::spawn(async move {
            c.sign_in(sign_in_request("1001")).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for c in calls {
        ids.insert(c.await.unwrap().unwrap().into_inner().session_id);
    }
    assert_eq!(ids.len(), 1);
    let logins = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/onlineagent/1001"))
        .count();
    assert_eq!(logins, 1);
}

#[tokio::test]
async fn pinned_agents_are_signed_in_at_start_and_kept_signed_in() {
    let h = Harness::with(fast_sim(), |c| c.agents.push(pinned_agent("1005"))).await;
    h.sim
        .wait_for_request(|r| r.method == "PUT" && r.path.ends_with("/onlineagent/1005"))
        .await;
    h.sim
        .wait_for_request(|r| r.path.ends_with("/agentevent/1005"))
        .await;
    h.sim.clear_requests();
    h.sim.force_sign_out("1005");
    let login = h
        .sim
        .wait_for_request(|r| r.method == "PUT" && r.path.ends_with("/onlineagent/1005"))
        .await;
    assert_eq!(login.json().unwrap()["phonenum"], "88005");
    h.sim
        .wait_for_request(|r| r.path.ends_with("/agentevent/1005"))
        .await;
    assert!(h.sim.signed_in("1005"));
}
