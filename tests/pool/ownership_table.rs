//! `call ownership --all`: the pool-wide agent → owner table (issue 25 point 7), read from one
//! instance, equal to what etcd holds and to the rendezvous assignment.

use super::*;
use ccgw_bridge::proto::WatchOwnershipRequest;
use std::collections::BTreeMap;

/// `ccgw-bridge call ARGS… --addr <bridge>` (the test build of the CLI), its stdout; it must
/// succeed.
async fn call(bridge: &Bridge, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgw-bridge"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CCGW_") {
            cmd.env_remove(name);
        }
    }
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        cmd.arg("call")
            .args(args)
            .args(["--addr", &bridge.grpc.to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the CLI finishes within 30 s")
    .expect("the CLI runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "call {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The agent → owner table of `call ownership --all --json` (`None`: nobody owns it).
async fn table(bridge: &Bridge) -> BTreeMap<String, Option<String>> {
    let out = call(bridge, &["ownership", "--all", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["instance"], bridge.name.as_str(), "{v}");
    v["pool_owners"]
        .as_object()
        .unwrap_or_else(|| panic!("pool_owners: {v}"))
        .iter()
        .map(|(agent, owner)| (agent.clone(), owner.as_str().map(str::to_owned)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ownership_all_lists_every_agent_of_the_pool_with_its_owner() {
    let agents = agents_for(&["tab-a", "tab-b"], 2);
    let p = pool(&agents, 1).await;
    let (a, want_a, b, want_b) = two_settled(&p, &agents, ["tab-a", "tab-b"]).await;
    let want: BTreeMap<String, Option<String>> = want_a
        .iter()
        .map(|x| (x.clone(), Some("tab-a".to_owned())))
        .chain(want_b.iter().map(|x| (x.clone(), Some("tab-b".to_owned()))))
        .collect();
    // Each instance sees the other's agents too (its view is at most one reconcile tick old).
    for bridge in [&a, &b] {
        wait_until(SETTLE, "the table names every owner", || async {
            table(bridge).await == want
        })
        .await;
    }
    let in_etcd: BTreeMap<String, Option<String>> = p.etcd[0]
        .owners("/ccgw-test/")
        .into_iter()
        .map(|(agent, owner)| (agent, Some(owner)))
        .collect();
    assert_eq!(in_etcd, want, "the table is etcd's owners/");

    // Text: this instance's line, then one line per agent of the pool, sorted.
    let text = call(&a, &["ownership", "--all"]).await;
    let mut lines = text.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("instance=tab-a lease=held")),
        "{text}"
    );
    let rows: Vec<String> = want
        .iter()
        .map(|(agent, owner)| format!("{agent} owner={}", owner.as_deref().unwrap_or("-")))
        .collect();
    assert_eq!(lines.map(str::to_owned).collect::<Vec<_>>(), rows, "{text}");

    // Without the flag the snapshot stays as before: no table (older clients see no change).
    let plain = a
        .client()
        .await
        .watch_ownership(WatchOwnershipRequest::default())
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .expect("a snapshot");
    assert!(plain.pool_owners.is_empty(), "{plain:?}");
    assert_eq!(plain.agent_ids, want_a.iter().cloned().collect::<Vec<_>>());
}
