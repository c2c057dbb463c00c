//! WatchPlayEvents / WatchAgentEvents: fan-out, order, filters, resume, every way a stream ends.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use prost_types::value::Kind;
use serde_json::json;
use std::time::Duration;
use tonic::{Code, Streaming};

fn watch_req(agent: &str) -> WatchPlayEventsRequest {
    WatchPlayEventsRequest {
        agent_id: agent.into(),
        ..Default::default()
    }
}

fn all_req(agent: &str) -> WatchAgentEventsRequest {
    WatchAgentEventsRequest {
        agent_id: agent.into(),
        ..Default::default()
    }
}

fn raw_event(agent: &str, name: &str, content: serde_json::Value) -> serde_json::Value {
    json!({"eventType": name, "workNo": agent, "content": content})
}

async fn stream_end<T: std::fmt::Debug>(s: &mut Streaming<T>) -> Result<(), tonic::Status> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("stream ends within 10 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(()),
            Err(status) => return Err(status),
        }
    }
}

async fn play_and_stop(h: &Harness, agent: &str) -> u64 {
    let mut play = h.play().await;
    let r = play
        .begin_play(BeginPlayRequest {
            agent_id: agent.into(),
            voice_path: "/prompts/welcome.wav".into(),
            await_outcome: true,
            ..Default::default()
        })
        .await
        .expect("play")
        .into_inner();
    play.stop_play(StopPlayRequest {
        agent_id: agent.into(),
    })
    .await
    .expect("stop");
    r.outcome_sequence.expect("outcome sequence")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_see_the_same_sequence_and_filters_hold() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    // Spread over channels, as real callers would (streams per connection are capped).
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(h.channel().await);
    }
    let mut streams = Vec::new();
    for i in 0..1000 {
        let mut client =
            record_play_service_client::RecordPlayServiceClient::new(channels[i % 10].clone());
        streams.push(
            client
                .watch_play_events(watch_req("1001"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let mut filtered = h
        .play()
        .await
        .watch_play_events(WatchPlayEventsRequest {
            agent_id: "1001".into(),
            types: vec![
                PlayEventType::PlaySucceeded as i32,
                PlayEventType::PlayStopped as i32,
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let session = h.session("1001").await;
    assert_eq!(session.watchers, 1001);

    let succ_seq = play_and_stop(&h, "1001").await;
    let readers = streams.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 3 {
                let e = next_event(&mut s).await;
                got.push((e.sequence, e.r#type, e.event_type, e.session_id));
            }
            got
        })
    });
    let all = futures::future::join_all(readers).await;
    let first = all[0].as_ref().unwrap().clone();
    let names: Vec<&str> = first.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(
        names,
        [
            "AgentMediaEvent_Play",
            "AgentMediaEvent_Play_Succ",
            "AgentMediaEvent_StopPlayDone"
        ]
    );
    assert_eq!(first[1].0, succ_seq);
    assert!(
        first.windows(2).all(|w| w[0].0 < w[1].0),
        "increasing sequences"
    );
    assert!(first.iter().all(|e| e.3 == session.session_id));
    for got in &all {
        assert_eq!(
            got.as_ref().unwrap(),
            &first,
            "every watcher saw the same events"
        );
    }
    let f1 = next_event(&mut filtered).await;
    let f2 = next_event(&mut filtered).await;
    assert_eq!(
        (f1.r#type, f2.r#type),
        (
            PlayEventType::PlaySucceeded as i32,
            PlayEventType::PlayStopped as i32
        )
    );
    assert_eq!((f1.sequence, f2.sequence), (first[1].0, first[2].0));
}

#[tokio::test]
async fn agent_events_carry_every_type_and_content_shape() {
    let h = Harness::start().await;
    let s = h.sign_in("1001").await;
    // resume_after 0 replays the session from its first event.
    let mut all = h
        .sessions()
        .await
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: "1001".into(),
            resume_after: Some(0),
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let shapes = [
        ("AgentOther_Custom", json!(null)),
        ("AgentEvent_Call_Release", json!("1456403549-15")),
        (
            "AgentMediaEvent_StopRecordDone",
            json!({"taskId": 5451, "fileMediaType": "1", "jsonKey": ["beginTime"]}),
        ),
        ("AgentMediaEvent_StopPlayDone", json!({"cause": 0})),
    ];
    for (name, content) in &shapes {
        h.sim
            .queue_event("1001", raw_event("1001", name, content.clone()));
    }
    // Events from the sign-in itself (InService, Ready) come first.
    let mut seen = Vec::new();
    while seen
        .last()
        .is_none_or(|e: &AgentEvent| e.event_type != shapes[3].0)
    {
        seen.push(next_event(&mut all).await);
    }
    assert_eq!(seen[0].event_type, "AgentOther_InService");
    let tail = &seen[seen.len() - shapes.len()..];
    for (e, (name, _)) in tail.iter().zip(&shapes) {
        assert_eq!(&e.event_type, name);
        assert_eq!(e.session_id, s.session_id);
    }
    assert!(
        tail[0].content.as_ref().unwrap().fields.is_empty(),
        "null → empty Struct"
    );
    assert_eq!(
        tail[1].content.as_ref().unwrap().fields["value"].kind,
        Some(Kind::StringValue("1456403549-15".into())),
        "a bare string is kept under `value`"
    );
    let rec = &tail[2].content.as_ref().unwrap().fields;
    assert_eq!(rec["taskId"].kind, Some(Kind::NumberValue(5451.0)));
    assert!(
        matches!(rec["jsonKey"].kind, Some(Kind::ListValue(_))),
        "unknown fields pass through"
    );
    let seqs: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    // The simulator rotates its empty-poll bodies (event null / absent / {}): the loop survived.
    assert!(h.sim.stats().polls >= 3);
}

#[tokio::test]
async fn resume_delivers_exactly_what_was_missed() {
    let h = Harness::start().await;
    let s = h.sign_in("1001").await;
    let mut client = h.sessions().await;
    let mut w = client
        .watch_agent_events(all_req("1001"))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        h.sim
            .queue_event("1001", raw_event("1001", &format!("E{i}"), json!(null)));
    }
    let last = loop {
        let e = next_event(&mut w).await;
        if e.event_type == "E0" {
            break e.sequence;
        }
    };
    drop(w);
    for i in 3..6 {
        h.sim
            .queue_event("1001", raw_event("1001", &format!("E{i}"), json!(null)));
    }
    let mut resumed = client
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: "1001".into(),
            resume_after: Some(last),
            session_id: s.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    let mut seqs = Vec::new();
    while names.len() < 5 {
        let e = next_event(&mut resumed).await;
        names.push(e.event_type);
        seqs.push(e.sequence);
    }
    assert_eq!(names, ["E1", "E2", "E3", "E4", "E5"]);
    assert_eq!(seqs, (last + 1..=last + 5).collect::<Vec<_>>());
    // And it continues live.
    h.sim
        .queue_event("1001", raw_event("1001", "E6", json!(null)));
    assert_eq!(next_event(&mut resumed).await.sequence, last + 6);
}

#[tokio::test]
async fn resume_outside_the_window_or_session_is_refused() {
    let h = Harness::with(fast_sim(), |c| c.sessions.event_window = 4).await;
    let s = h.sign_in("1001").await;
    let mut client = h.sessions().await;
    let mut w = client
        .watch_agent_events(all_req("1001"))
        .await
        .unwrap()
        .into_inner();
    for i in 0..8 {
        h.sim
            .queue_event("1001", raw_event("1001", &format!("E{i}"), json!(null)));
    }
    while next_event(&mut w).await.event_type != "E7" {}
    let status = expect_code(
        client
            .watch_agent_events(WatchAgentEventsRequest {
                agent_id: "1001".into(),
                resume_after: Some(1),
                session_id: s.session_id.clone(),
            })
            .await,
        Code::OutOfRange,
    );
    assert_eq!(reason(&status), "RESUME_OUT_OF_RANGE");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    let newest: u64 = info.metadata["newest_sequence"].parse().unwrap();
    assert_eq!(info.metadata["oldest_sequence"], (newest - 3).to_string());

    client
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
    h.sign_in("1001").await;
    let status = expect_code(
        h.play()
            .await
            .watch_play_events(WatchPlayEventsRequest {
                agent_id: "1001".into(),
                resume_after: Some(1),
                session_id: s.session_id.clone(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "SESSION_CHANGED");
}

#[tokio::test]
async fn a_busy_agent_pushes_a_quiet_agents_events_out_of_the_shared_budget() {
    // 4 KiB for the whole bridge: far below 64 events of 1002, while each agent's own window
    // (4,096 events) would keep everything.
    let h = Harness::with(fast_sim(), |c| {
        c.sessions.event_budget =
            ccgw_bridge::events::EventBudget::new(4096, Duration::from_secs(3600))
    })
    .await;
    let quiet = h.sign_in("1001").await;
    h.sign_in("1002").await;
    let mut client = h.sessions().await;
    let mut w1 = client
        .watch_agent_events(all_req("1001"))
        .await
        .unwrap()
        .into_inner();
    h.sim
        .queue_event("1001", raw_event("1001", "Q1", json!(null)));
    h.sim
        .queue_event("1001", raw_event("1001", "Q2", json!(null)));
    let first = next_event(&mut w1).await.sequence;
    assert_eq!(next_event(&mut w1).await.event_type, "Q2");
    // Resuming from before Q1: Q2, the quiet agent's newest, is never evicted (nor anything
    // its watcher w1 has not read), but Q1 is fair game.
    let resume_1001 = WatchAgentEventsRequest {
        agent_id: "1001".into(),
        resume_after: Some(first - 1),
        session_id: quiet.session_id.clone(),
    };
    assert!(
        client.watch_agent_events(resume_1001.clone()).await.is_ok(),
        "held while the budget has room"
    );
    // That resumed watcher would protect Q1 while it lives: wait until it is gone.
    until_watchers(&h, "1001", 1).await;

    let mut w2 = client
        .watch_agent_events(all_req("1002"))
        .await
        .unwrap()
        .into_inner();
    for i in 0..64 {
        h.sim
            .queue_event("1002", raw_event("1002", &format!("B{i}"), json!({"n": i})));
    }
    while next_event(&mut w2).await.event_type != "B63" {}

    let status = expect_code(
        client.watch_agent_events(resume_1001).await,
        Code::OutOfRange,
    );
    assert_eq!(reason(&status), "RESUME_OUT_OF_RANGE");

    // The budget's work shows in /metrics: evictions counted by cause, bytes within budget.
    let metrics = h.metrics().await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(
        value("ccgw_events_evicted_total{cause=\"budget\"}") >= 2,
        "1001's older events and more of 1002's were evicted: {metrics}"
    );
    assert_eq!(value("ccgw_events_evicted_total{cause=\"age\"}"), 0);
    assert_eq!(value("ccgw_retained_event_budget_bytes"), 4096);
    let used = value("ccgw_retained_event_bytes");
    assert!(used > 0 && used <= 4096, "{used}");
}

#[tokio::test]
async fn streams_end_ok_on_sign_out_and_aborted_on_forced_sign_out() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut w = h.watch_play("1001").await;
    h.sessions()
        .await
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
    assert!(
        stream_end(&mut w).await.is_ok(),
        "sign-out completes the stream with OK"
    );

    h.sign_in("1002").await;
    let mut w = h.watch_play("1002").await;
    h.sim.force_sign_out("1002");
    let status = stream_end(&mut w)
        .await
        .expect_err("forced sign-out is an error");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(reason(&status), "SESSION_ENDED");

    let status = expect_code(
        h.play().await.watch_play_events(watch_req("1003")).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "AGENT_NOT_SIGNED_IN");
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let mut h = Harness::start().await;
    h.sign_in("1001").await;
    let mut w = h.watch_play("1001").await;
    h.begin_stop();
    let status = stream_end(&mut w).await.expect_err("shutdown is an error");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "SHUTTING_DOWN");
    h.stopped().await.unwrap();
}

#[tokio::test]
async fn a_cancelled_watcher_is_released() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut sessions = h.sessions().await;
    let watchers = |s: Session| s.watchers;
    let get = GetSessionRequest {
        agent_id: "1001".into(),
    };
    let before = watchers(
        sessions
            .get_session(get.clone())
            .await
            .unwrap()
            .into_inner(),
    );
    let w = h.watch_play("1001").await;
    assert_eq!(
        watchers(
            sessions
                .get_session(get.clone())
                .await
                .unwrap()
                .into_inner()
        ),
        before + 1
    );
    drop(w);
    until_watchers(&h, "1001", before).await;
}

/// Waits (bounded) until the bridge counts `n` watchers of `agent`. A cancelled stream is
/// released when the server sees its reset, which the client cannot await.
async fn until_watchers(h: &Harness, agent: &str, n: u32) {
    let mut sessions = h.sessions().await;
    let get = GetSessionRequest {
        agent_id: agent.into(),
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while sessions
            .get_session(get.clone())
            .await
            .unwrap()
            .into_inner()
            .watchers
            != n
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("watcher count of {agent} returns to {n}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_slows_nobody_and_is_told_where_it_stopped() {
    let h = Harness::with(fast_sim(), |c| c.sessions.event_window = 64).await;
    stall_a_watcher_and_read_it_at_last(&h).await;
}

/// Issue 23 point 7: a stalled watcher holds no more than the event budget, even when its
/// session's window (4,096) would hold everything; the budget overtaking it ends its stream as
/// the window cap does.
#[tokio::test]
async fn a_stalled_watcher_is_told_where_it_stopped_when_the_budget_overtakes_it() {
    const BUDGET: usize = 256 << 10;
    let h = Harness::with(fast_sim(), |c| {
        c.sessions.event_budget =
            ccgw_bridge::events::EventBudget::new(BUDGET, Duration::from_secs(3600))
    })
    .await;
    stall_a_watcher_and_read_it_at_last(&h).await;
    let metrics = h.metrics().await;
    let used: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ccgw_retained_event_bytes "))
        .expect("ccgw_retained_event_bytes exported")
        .parse()
        .unwrap();
    assert!(used <= BUDGET, "{used}");
}

/// Publishes 3,000 events of ~1 KB to agent 1001 while one watcher reads everything and
/// another reads nothing, then reads the stalled one: contiguous events, then WATCHER_OVERRUN.
async fn stall_a_watcher_and_read_it_at_last(h: &Harness) {
    h.sign_in("1001").await;
    // Separate connections: HTTP/2 flow control is per connection as well as per stream.
    // A small client window, so the stalled stream stops being drained quickly.
    let small = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
        .unwrap()
        .initial_stream_window_size(Some(65_535))
        .initial_connection_window_size(Some(65_535))
        .connect()
        .await
        .unwrap();
    let mut stalled = agent_session_service_client::AgentSessionServiceClient::new(small)
        .watch_agent_events(all_req("1001"))
        .await
        .unwrap()
        .into_inner();
    let mut live = h.watch_all("1001").await;
    // Published in steps of half the window, each awaited at the live watcher before the next,
    // so the live watcher can never fall out of the window however slow the machine is; the
    // stalled one reads nothing and falls out all the same.
    const N: usize = 3000;
    const STEP: usize = 32;
    let mut expected = None;
    for step in 0..N / STEP {
        for i in step * STEP..(step + 1) * STEP {
            h.sim.queue_event(
                "1001",
                raw_event("1001", "Bulk", json!({"i": i, "pad": "x".repeat(1000)})),
            );
        }
        // The live watcher gets every event in order while the stalled one reads nothing.
        let mut bulk = 0;
        while bulk < STEP {
            let e = next_event(&mut live).await;
            if let Some(exp) = expected {
                assert_eq!(e.sequence, exp, "no gap for the live watcher");
            }
            expected = Some(e.sequence + 1);
            if e.event_type == "Bulk" {
                bulk += 1;
            }
        }
    }
    // Now read the stalled one: contiguous events (what was already in flight), then a status.
    let mut last: Option<u64> = None;
    let status = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), stalled.message())
            .await
            .expect("the stalled watcher gets events or a status, never silence");
        match next {
            Ok(Some(e)) => {
                assert!(
                    last.is_none_or(|l| e.sequence == l + 1),
                    "contiguous until the overrun"
                );
                last = Some(e.sequence);
            }
            Ok(None) => panic!("a stalled watcher must not end silently"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "WATCHER_OVERRUN");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(
        info.metadata["last_sequence"],
        last.unwrap_or(0).to_string()
    );
}

#[tokio::test]
async fn begin_play_awaits_the_outcome() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut watcher = h.watch_play("1001").await;
    let mut play = h.play().await;
    let ok = play
        .begin_play(BeginPlayRequest {
            agent_id: "1001".into(),
            voice_path: "/prompts/a.wav".into(),
            await_outcome: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The awaiting call took nothing away from the watcher.
    let started = next_event(&mut watcher).await;
    let succeeded = next_event(&mut watcher).await;
    assert_eq!(started.r#type, PlayEventType::PlayStarted as i32);
    assert_eq!(Some(succeeded.sequence), ok.outcome_sequence);

    h.sign_in("1002").await;
    let failed = expect_code(
        play.begin_play(BeginPlayRequest {
            agent_id: "1002".into(),
            voice_path: "/prompts/fail.wav".into(),
            await_outcome: true,
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&failed), "PLAY_FAILED");
}

#[tokio::test]
async fn an_outcome_that_never_comes_is_deadline_exceeded() {
    let sim = ccgw_bridge::sim::SimConfig {
        play_step: Duration::from_secs(5),
        ..fast_sim()
    };
    let h = Harness::with(sim, |_| {}).await;
    h.sign_in("1001").await;
    let mut req = tonic::Request::new(BeginPlayRequest {
        agent_id: "1001".into(),
        voice_path: "/prompts/a.wav".into(),
        await_outcome: true,
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let status = expect_code(h.play().await.begin_play(req).await, Code::DeadlineExceeded);
    assert_eq!(reason(&status), "PLAY_OUTCOME_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(2));
}
