//! `call health` and `call ready`: what the kubelet's probes see, asked from inside the pod
//! (`kubectl exec … ccgw-bridge call ready`), where the distroless image has no curl or grpcurl.

use super::output::Output;
use super::Failure;
use serde_json::json;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// grpc.health.v1 Check of `service` on the bridge's API; anything but SERVING fails the command.
pub(super) async fn health(
    channel: Channel,
    service: &str,
    timeout: Duration,
    out: &Output,
) -> Result<(), Failure> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    request.set_timeout(timeout);
    let status = HealthClient::new(channel)
        .check(request)
        .await?
        .into_inner()
        .status();
    let name = status.as_str_name();
    if out.json {
        emit!("{}", json!({"service": service, "status": name}))?;
    } else {
        emit!("{name}")?;
    }
    match status {
        ServingStatus::Serving => Ok(()),
        _ => Err(Status::unavailable(format!("health of {service:?}: {name}")).into()),
    }
}

/// The admin listener's `/readyz`: its answer printed, failing the command unless it is 200.
pub(super) async fn ready(admin: &str, timeout: Duration, out: &Output) -> Result<(), Failure> {
    let url = format!("http://{admin}/readyz");
    // reqwest builds a rustls configuration even for plain http.
    crate::crypto::install_crypto_provider();
    let answer = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| Status::internal(e.to_string()))?
        .get(&url)
        .send()
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "{url}: {e} (is --admin the bridge's --admin-listen? default 127.0.0.1:9090)"
            ))
        })?;
    let code = answer.status();
    let body = answer
        .text()
        .await
        .map_err(|e| Status::unavailable(format!("{url}: {e}")))?;
    let reason = body.trim();
    if out.json {
        emit!(
            "{}",
            json!({"ready": code.is_success(), "http_status": code.as_u16(), "reason": reason})
        )?;
    } else {
        emit!("{reason}")?;
    }
    match code.is_success() {
        true => Ok(()),
        false => Err(Status::unavailable(format!("{url} answered {code}: {reason}")).into()),
    }
}
