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

/// Every relative link of the README and docs/ names a file of the repository: a clone has
/// nothing outside it (the architecture once lived in `../shared/design.md`). A link to a
/// heading (`page.md#anchor`, `#anchor`) names a heading that page has: the README's sections
/// moved to docs/ pages once, and an anchor left behind fails silently on GitHub.
#[test]
fn documentation_links_stay_inside_the_repository() {
    let root = venv::root();
    let mut docs = vec![root.join("README.md"), root.join("deploy/k8s/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        docs.push(entry.unwrap().path());
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target, None),
            };
            if path.contains("://") {
                continue;
            }
            let resolved = if path.is_empty() {
                doc.clone()
            } else {
                dir.join(path)
            };
            assert!(
                resolved.exists(),
                "{}: link {target:?} names nothing in the repository",
                doc.display()
            );
            let canonical = resolved.canonicalize().unwrap();
            assert!(
                canonical.starts_with(root.canonicalize().unwrap()),
                "{}: link {target:?} leaves the repository",
                doc.display()
            );
            if let Some(anchor) = anchor {
                if resolved.extension().is_some_and(|e| e == "md") {
                    let page = std::fs::read_to_string(&resolved).unwrap();
                    assert!(
                        heading_anchors(&page).iter().any(|a| a == anchor),
                        "{}: link {target:?} names no heading of {}",
                        doc.display(),
                        resolved.display()
                    );
                }
            }
        }
    }
}

/// docs/architecture.md is the map of the code: every module of `src/` (file or folder) is named
/// in it (the agent pool, `src/pool/`, once was not).
#[test]
fn the_architecture_names_every_module() {
    let root = venv::root();
    let text = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let module = format!("src/{}", name.trim_end_matches(".rs"));
        assert!(
            text.contains(&module),
            "docs/architecture.md does not name {module}"
        );
    }
}

/// The LICENSE file is the licence Cargo.toml declares.
#[test]
fn the_license_file_is_the_one_cargo_toml_declares() {
    let root = venv::root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""), "{manifest}");
    let license = std::fs::read_to_string(root.join("LICENSE")).unwrap();
    assert!(
        license.contains("Apache License") && license.contains("Version 2.0, January 2004"),
        "LICENSE is not the Apache License 2.0"
    );
}

/// The anchors GitHub gives a markdown page's headings (outside code fences): lower case, spaces
/// to `-`, punctuation other than `-` and `_` dropped, `-1`, `-2`… on repeats.
fn heading_anchors(text: &str) -> Vec<String> {
    let mut anchors: Vec<String> = Vec::new();
    let mut slugs: Vec<String> = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if fenced || level == 0 || level > 6 || !line[level..].starts_with(' ') {
            continue;
        }
        let slug: String = line[level..]
            .trim()
            .to_lowercase()
            .chars()
            .filter(|&c| c.is_alphanumeric() || c == '-' || c == '_' || c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let repeats = slugs.iter().filter(|s| **s == slug).count();
        anchors.push(match repeats {
            0 => slug.clone(),
            n => format!("{slug}-{n}"),
        });
        slugs.push(slug);
    }
    anchors
}
