//! Accepting and serving connections, with the bounds a server open to any client needs: a
//! cap on open connections (one more is answered 429 and closed, rather than left waiting in
//! the kernel's queue or exhausting the process's file descriptors), and a deadline on each
//! request's headers that also runs while a kept-alive connection waits for its next request,
//! so idle and half-sent connections are dropped. On shutdown it stops accepting, lets every
//! connection finish the request it is answering, and completes when all have closed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// Largest buffer a connection reads into: request heads over it are refused (431), and no
/// connection holds more than this while its headers arrive.
const MAX_READ_BUFFER: usize = 64 * 1024;

/// How long a refused connection is given to take its answer before it is closed.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// The bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request's complete headers, from the connection's opening or its
    /// previous answer.
    pub header_timeout: Duration,
}

/// Serves `app` on every connection `listener` accepts until `shutdown` completes; then
/// completes once the connections have finished their requests in flight and closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (stopping, stop) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the listener itself is fine, so wait a moment and carry on.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics.increment("connections_refused", 1);
            tokio::spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _open = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(MAX_READ_BUFFER);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.changed() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    drop(stopping);
    while connections.join_next().await.is_some() {}
}

/// Answers a connection over the cap with a 429 and closes it. What the client sent is read
/// (for a moment, and discarded) so that closing does not reset the connection under the answer.
async fn refuse(mut stream: TcpStream, max_connections: usize) {
    let body = crate::error::ApiError::overloaded(format!(
        "the server has {max_connections} connections open, its limit; retry shortly"
    ))
    .body();
    let body = serde_json::to_string(&body).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_GRACE, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut discard = [0u8; 4096];
        let mut read = 0;
        while read < MAX_READ_BUFFER {
            match stream.read(&mut discard).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}
