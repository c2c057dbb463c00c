//! The listener: accepts TCP connections, completes TLS, serves HTTP/1.1 or h2 (by ALPN / preface)
//! with one task per connection, until the simulator shuts down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::routes;
use super::shared::Shared;

/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent h2 streams per connection: high enough for thousands of agents' held polls on a
/// single multiplexed connection.
const MAX_H2_STREAMS: u32 = 20_000;

/// Accepts connections until shutdown, each served by its own task.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                tokio::spawn(connection(stream, acceptor.clone(), Arc::clone(&shared)));
            }
            // Typically EMFILE under load: back off briefly instead of spinning.
            Err(error) => {
                tracing::warn!(%error, "simulator: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    // Best effort: latency matters more than packet count for a test server.
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            _ => return,
        },
    };
    let number = shared.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    let _open = OpenConnection::new(Arc::clone(&shared));

    let service_state = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |request| {
        let shared = Arc::clone(&service_state);
        async move { routes::handle(&shared, number, request).await }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(MAX_H2_STREAMS);
    let served = builder.serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        result = served => {
            if let Err(error) = result {
                tracing::trace!(%error, "simulator: connection ended with an error");
            }
        }
    }
}

/// Counts a connection as active for as long as it is alive.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> OpenConnection {
        shared.active_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
