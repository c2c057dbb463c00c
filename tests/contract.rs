//! The gRPC contract is guarded like a public API: `buf lint` passes (every exception is in
//! buf.yaml with its reason), and `buf breaking` — which CI runs against the previous commit of
//! main (scripts/buf-check) — really refuses a breaking change.

#[path = "e2e/venv.rs"]
#[allow(dead_code)] // shared with the e2e binary, which uses the rest
mod venv;

use std::path::PathBuf;
use std::process::{Command, Output};

fn buf() -> PathBuf {
    venv::npm_dir("tools/buf").join("node_modules/.bin/buf")
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(venv::root())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}; {}", venv::HINT))
}

#[test]
fn buf_lint_passes() {
    let out = run(Command::new(buf()).arg("lint"));
    assert!(
        out.status.success(),
        "buf lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn buf_breaking_refuses_a_renumbered_field() {
    let dir = std::env::temp_dir().join(format!("ccgw-contract-{}", std::process::id()));
    let v1 = dir.join("ccgw/v1");
    std::fs::create_dir_all(&v1).unwrap();
    for file in ["recordplay.proto", "session.proto"] {
        std::fs::copy(venv::root().join("proto/ccgw/v1").join(file), v1.join(file)).unwrap();
    }
    let unchanged = run(Command::new(buf())
        .arg("breaking")
        .arg(&dir)
        .args(["--against", "proto"]));
    assert!(unchanged.status.success(), "{unchanged:?}");

    let path = v1.join("recordplay.proto");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("string voice_path = 2;"));
    std::fs::write(
        &path,
        text.replace("string voice_path = 2;", "string voice_path = 9;"),
    )
    .unwrap();
    let broken = run(Command::new(buf())
        .arg("breaking")
        .arg(&dir)
        .args(["--against", "proto"]));
    let report = String::from_utf8_lossy(&broken.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!broken.status.success(), "a renumbered field is refused");
    assert!(report.contains("voice_path"), "{report}");
}
