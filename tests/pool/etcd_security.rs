//! Issue 18 point 2: a production etcd — TLS with client certificates, and `auth enable` —
//! with a real etcd started that way and certificates the test makes; plus the start-up checks
//! of the flags.

use super::*;
use ccgw_bridge::sim::Simulator;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`;
/// `issuer` signs further client certificates ([`Certs::client_named`]).
struct Certs {
    ca: PathBuf,
    server: PathBuf,
    server_key: PathBuf,
    client: PathBuf,
    client_key: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Certs {
    /// The bridge's flags for an etcd of these certificates, with client certificate `cert`.
    fn bridge_flags(&self, cert: &Path, key: &Path) -> [String; 6] {
        [
            "--etcd-ca-cert".into(),
            s(&self.ca),
            "--etcd-client-cert".into(),
            s(cert),
            "--etcd-client-key".into(),
            s(key),
        ]
    }

    /// A client certificate with Common Name `cn` (etcd's user when no password is given) and
    /// its key, written to `{file}.pem` and `{file}-key.pem` in `dir`.
    fn client_named(&self, dir: &Path, cn: &str, file: &str) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (
            write_private(dir, &format!("{file}.pem"), &cert.pem()),
            write_private(dir, &format!("{file}-key.pem"), &key.serialize_pem()),
        )
    }
}

/// Writes `text` to `dir/name`, mode 0600.
fn write_private(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn make_certs(dir: &Path) -> Certs {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client, client_key) = leaf(
        vec!["ccgw-bridge".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let write = |name: &str, text: &str| write_private(dir, name, text);
    Certs {
        ca: write("ca.pem", &ca.pem()),
        server: write("server.pem", &server),
        server_key: write("server-key.pem", &server_key),
        client: write("client.pem", &client),
        client_key: write("client-key.pem", &client_key),
        issuer,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A pool's surroundings on an etcd serving TLS with `certs.server` and requiring client
/// certificates signed by `certs.ca` (`--client-cert-auth`), answering `endpoint health`.
struct TlsPool {
    setup: PoolSetup,
    _sim: Simulator,
    etcd: Etcd,
    certs: Certs,
    dir: TempDir,
}

impl TlsPool {
    async fn start(tag: &str, agents: &[String]) -> TlsPool {
        let dir = TempDir::new(tag);
        let certs = make_certs(&dir.0);
        let etcd = Etcd::single_with(
            &dir.0,
            "https",
            &[
                "--cert-file".into(),
                s(&certs.server),
                "--key-file".into(),
                s(&certs.server_key),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                s(&certs.ca),
            ],
        );
        let (ca, cert, key) = (s(&certs.ca), s(&certs.client), s(&certs.client_key));
        let health = [
            "--cacert", &ca, "--cert", &cert, "--key", &key, "endpoint", "health",
        ];
        wait_until(SETTLE, "etcd serves TLS", || async {
            etcd.ctl(&health).status.success()
        })
        .await;
        let sim = simulator().await;
        let setup = PoolSetup::new(&dir.0, &sim, agents, &[&etcd]);
        TlsPool {
            setup,
            _sim: sim,
            etcd,
            certs,
            dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_an_etcd_with_mutual_tls_holds_its_agents_and_a_bridge_without_a_client_cert_is_refused(
) {
    let agents = agents_for(&["tls-a"], 2);
    let all = set(&agents);
    let TlsPool { certs, setup, .. } = &TlsPool::start("tls", &agents).await;
    let ca = s(&certs.ca);
    let tls = certs.bridge_flags(&certs.client, &certs.client_key);
    let mut a = Bridge::start_with(setup, "tls-a", &tls.each_ref().map(String::as_str));
    wait_until(SETTLE, "a holds its agents through mutual TLS", || async {
        a.held().await == all
    })
    .await;
    // Without a client certificate etcd refuses the connection: the bridge never joins.
    let mut b = Bridge::start_with(setup, "tls-b", &["--etcd-ca-cert", &ca]);
    wait_until(SETTLE, "b reports that joining fails", || async {
        b.log_text().contains("pool: joining failed")
    })
    .await;
    assert!(b.held().await.is_empty());
    assert!(!b.ready().await);
    assert_eq!(a.held().await, all);
    a.sigterm_and_wait().await;
    b.sigterm_and_wait().await;
}

/// The `sh` block of docs/running-replicas.md's "Securing the pool's etcd", with its
/// `ETCDCTL_ENDPOINTS` pointed at `endpoint`; every other line as the page gives it.
fn documented_etcd_recipe(endpoint: &str) -> String {
    let page = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/running-replicas.md"),
    )
    .unwrap();
    let section = page
        .split_once("**Securing the pool's etcd.**")
        .expect("the section is in the page")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the section has an sh block")
        .0;
    let documented = "ETCDCTL_ENDPOINTS=https://etcd.ccgw-system:2379";
    assert!(block.contains(documented), "{block}");
    block.replace(documented, &format!("ETCDCTL_ENDPOINTS={endpoint}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_etcdctl_recipe_confines_a_pool_to_its_prefix() {
    let agents = agents_for(&["recipe-a"], 2);
    let all = set(&agents);
    let TlsPool {
        setup,
        etcd,
        certs,
        dir,
        ..
    } = &TlsPool::start("recipe", &agents).await;
    // The files the recipe names, in the folder it runs in.
    certs.client_named(&dir.0, "root", "admin");
    let (cert, key) = certs.client_named(&dir.0, "ccgw-ivr-app", "ccgw-ivr-app");
    write_private(&dir.0, "root.pw", "etcd-root-pw\n");
    let password = s(&write_private(&dir.0, "ccgw-ivr-app.pw", "etcd-app-pw\n"));
    let ctl_dir = etcd_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", ctl_dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &documented_etcd_recipe(&etcd.client_url),
        ])
        .current_dir(&dir.0)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "the recipe: {out:?}");

    let tls = certs.bridge_flags(&cert, &key);
    let tls = tls.each_ref().map(String::as_str);
    // As the manifests run it (the user and its password), then with no password: etcd takes
    // the user from the certificate's CN. Both on the prefix the role grants.
    let granted = ["--etcd-prefix", "/ccgw-bridge/ivr-app/"];
    let as_user = [
        "--etcd-user",
        "ccgw-ivr-app",
        "--etcd-password-file",
        &password,
    ];
    for (name, user) in [("recipe-a", &as_user[..]), ("recipe-b", &[][..])] {
        let args: Vec<&str> = tls.iter().chain(user).chain(&granted).copied().collect();
        let mut b = Bridge::start_with(setup, name, &args);
        wait_until(SETTLE, &format!("{name} holds its agents"), || async {
            b.held().await == all
        })
        .await;
        b.sigterm_and_wait().await;
    }
    // Outside the role's range etcd refuses: the bridge never joins.
    let outside = ["--etcd-prefix", "/ccgw-bridge/other-app/"];
    let outside: Vec<&str> = tls.iter().chain(&outside).copied().collect();
    let mut c = Bridge::start_with(setup, "recipe-c", &outside);
    wait_until(SETTLE, "c reports etcd's refusal", || async {
        c.log_text().contains("permission denied")
    })
    .await;
    assert!(c.held().await.is_empty());
    assert!(!c.ready().await);
    c.sigterm_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_on_an_etcd_with_auth_joins_as_its_user_and_a_wrong_password_is_named() {
    let agents = agents_for(&["auth-a"], 2);
    let all = set(&agents);
    let p = pool(&agents, 1).await;
    let etcd = &p.etcd[0];
    for args in [
        &["user", "add", "root", "--new-user-password", "etcd-root-pw"][..],
        &["auth", "enable"][..],
    ] {
        let out = etcd.ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    }
    let write = |name: &str, text: &str| {
        let path = p.setup.dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        s(&path)
    };
    let good = write("etcd-pw", "etcd-root-pw\n");
    let bad = write("etcd-pw-bad", "not-it\n");
    let mut a = Bridge::start_with(
        &p.setup,
        "auth-a",
        &["--etcd-user", "root", "--etcd-password-file", &good],
    );
    wait_until(SETTLE, "a holds its agents as etcd user root", || async {
        a.held().await == all
    })
    .await;
    let mut b = Bridge::start_with(
        &p.setup,
        "auth-b",
        &["--etcd-user", "root", "--etcd-password-file", &bad],
    );
    wait_until(SETTLE, "b says etcd refused its credentials", || async {
        b.log_text()
            .contains("etcd refused the credentials of --etcd-user")
    })
    .await;
    assert!(
        !b.log_text().contains("not-it"),
        "the password is never logged"
    );
    let mut c = Bridge::start(&p.setup, "auth-c");
    wait_until(SETTLE, "c says etcd requires authentication", || async {
        c.log_text().contains("etcd requires authentication")
    })
    .await;
    assert!(b.held().await.is_empty() && c.held().await.is_empty());
    a.sigterm_and_wait().await;
    b.sigterm_and_wait().await;
    c.sigterm_and_wait().await;
}

#[test]
fn etcd_tls_and_auth_flags_are_checked_before_anything_starts() {
    let dir = TempDir::new("etcd-flags");
    let certs = make_certs(&dir.0);
    let agents = agents_file(&dir.0, &["2001".to_string()]);
    let not_pem = dir.0.join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let open_key = dir.0.join("open-key.pem");
    std::fs::copy(&certs.client_key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let validate = |extra: &[&str]| {
        let mut args = vec!["--instance-name", "x"];
        args.extend_from_slice(extra);
        validate_flags(&agents, &args)
    };
    let (ca, cert, key) = (s(&certs.ca), s(&certs.client), s(&certs.client_key));
    let ok = validate(&[
        "--etcd-endpoints",
        "https://127.0.0.1:2379",
        "--etcd-ca-cert",
        &ca,
        "--etcd-client-cert",
        &cert,
        "--etcd-client-key",
        &key,
    ])
    .expect("valid");
    let pool = ok.pool.unwrap();
    assert!(pool.tls.is_some_and(|t| t.identity.is_some()));
    for (extra, want) in [
        (
            vec!["--etcd-endpoints", "https://127.0.0.1:2379"],
            "no --etcd-ca-cert",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--etcd-ca-cert",
                &ca,
            ],
            "are http://",
        ),
        (
            vec![
                "--etcd-endpoints",
                "https://127.0.0.1:2379,http://127.0.0.1:2380",
                "--etcd-ca-cert",
                &ca,
            ],
            "every endpoint with https://",
        ),
        (
            vec![
                "--etcd-endpoints",
                "https://127.0.0.1:2379",
                "--etcd-ca-cert",
                not_pem.to_str().unwrap(),
            ],
            "not.pem: holds no PEM certificate",
        ),
        (
            vec![
                "--etcd-endpoints",
                "https://127.0.0.1:2379",
                "--etcd-ca-cert",
                &ca,
                "--etcd-client-cert",
                &cert,
                "--etcd-client-key",
                open_key.to_str().unwrap(),
            ],
            "readable by every user",
        ),
        (
            vec![
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--etcd-user",
                "root",
            ],
            "--etcd-password-file",
        ),
    ] {
        let err = validate(&extra).expect_err(want);
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

/// The cause of a failed join in one line with its fix, in `/readyz` and the log: no Debug
/// dump of the transport's error chain, and never "answered" when nothing answered.
async fn join_failure(bridge: &Bridge, hint: &str) -> String {
    wait_until(SETTLE, hint, || async { bridge.log_text().contains(hint) }).await;
    let readyz = bridge.readyz().await;
    let body = readyz
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert!(body.contains(hint), "{readyz}");
    for dump in ["hyper::Error", "Custom {", "kind:", "answered", "Status {"] {
        assert!(!body.contains(dump), "{dump:?} in {body}");
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_connection_failures_are_named_with_their_fix() {
    let agents = agents_for(&["hint-a"], 1);
    let TlsPool {
        setup, certs, dir, ..
    } = &TlsPool::start("hints", &agents).await;
    // No client certificate for an etcd that requires one.
    let ca = s(&certs.ca);
    let b = Bridge::start_with(setup, "hint-a", &["--etcd-ca-cert", &ca]);
    join_failure(
        &b,
        "etcd requires a client certificate: pass --etcd-client-cert/--etcd-client-key",
    )
    .await;
    // A CA that did not sign etcd's certificate.
    let other = TempDir::new("other-ca");
    let wrong = make_certs(&other.0);
    let tls = wrong.bridge_flags(&certs.client, &certs.client_key);
    let c = Bridge::start_with(setup, "hint-b", &tls.each_ref().map(String::as_str));
    join_failure(
        &c,
        "--etcd-ca-cert does not hold the CA that signed etcd's certificate",
    )
    .await;
    // Nothing listens at the endpoint.
    let mut nowhere = setup.clone();
    nowhere.endpoints = format!("http://127.0.0.1:{}", free_port());
    nowhere.dir = dir.0.clone();
    let d = Bridge::start(&nowhere, "hint-c");
    let body = join_failure(&d, "nothing listens at").await;
    assert!(body.contains("check --etcd-endpoints"), "{body}");
}

/// A bridge restarted under its name while its previous run's lease lives on (a SIGKILL) is
/// told so, and joins once that lease ends, instead of hearing "give every replica its own
/// --instance-name".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_within_the_old_lease_says_so_and_joins_when_it_ends() {
    let agents = agents_for(&["again"], 2);
    let all = set(&agents);
    let p = pool(&agents, 1).await;
    let mut a = Bridge::start(&p.setup, "again");
    wait_until(
        SETTLE,
        "a holds its agents and has handed their Guids on",
        || async {
            a.held().await == all
                && tokio::task::block_in_place(|| p.etcd[0].holders("/ccgw-test/")) == all
        },
    )
    .await;
    a.sigkill();
    let mut b = Bridge::start(&p.setup, "again");
    let hint = "a previous run of this instance?";
    wait_until(SETTLE, hint, || async { b.log_text().contains(hint) }).await;
    assert!(
        b.log_text().contains("held by a lease that ends within"),
        "{}",
        b.log_text()
    );
    wait_until(SETTLE, "b joins once the old lease ends", || async {
        b.held().await == all
    })
    .await;
    b.sigterm_and_wait().await;
}
