//! Gateway failures whose cause is a likely configuration mistake carry a hint in the status a
//! caller gets (not only in the readiness log): a CA bundle without the gateway's issuer, and a
//! plain-HTTP port given as `--gateway-url`.

use crate::helpers::*;
use ccgw_bridge::sim::Simulator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[tokio::test]
async fn a_ca_bundle_without_the_gateways_issuer_gets_a_hint() {
    let trusted = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let gateway = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // --ca-cert holds a CA, but not the one that signed this gateway's certificate (one of the
    // same name: rustls reports BadSignature; a CA of another name gives UnknownIssuer).
    let mut config = config_for(&trusted);
    config.gateway.base_url = gateway.url();
    drop(trusted);
    let h = Harness::bridge(gateway, config).await;
    let status = expect_code(
        h.sessions().await.sign_in(sign_in_request("1001")).await,
        Code::Unavailable,
    );
    assert_eq!(reason(&status), "GATEWAY_UNREACHABLE", "{status:?}");
    let msg = status.message();
    assert!(
        (msg.contains("UnknownIssuer") || msg.contains("BadSignature"))
            && msg.contains("hint:")
            && msg.contains("--ca-cert"),
        "names the cause and the fix: {msg}"
    );
}

#[tokio::test]
async fn a_plain_http_port_as_gateway_url_gets_a_hint() {
    // A plain-HTTP server: whatever arrives, it answers 400 as HTTP/1.1 servers do to TLS.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = plain.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = plain.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    let h = Harness::with(fast_sim(), |c| {
        c.gateway.base_url = format!("https://127.0.0.1:{port}");
    })
    .await;
    let status = expect_code(
        h.sessions().await.sign_in(sign_in_request("1001")).await,
        Code::Unavailable,
    );
    let msg = status.message();
    assert!(
        msg.contains("hint:") && msg.contains("plain HTTP") && msg.contains("--gateway-url"),
        "says the port does not speak TLS: {msg}"
    );
}
