//! A local port that reaches a pod through the API server's port-forward subresource (what
//! `kubectl port-forward` does), so `oim bench` can measure a candidate from outside the cluster
//! without a Service of type LoadBalancer, an Ingress or a route to pod IPs.
//!
//! Every accepted TCP connection gets its own port-forward stream (one WebSocket through the API
//! server to the kubelet), so the benchmark's concurrent keep-alive connections map one to one
//! onto streams.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The last error a stream met, for the message when the engine cannot be reached (logging
/// each would repeat it for every health probe).
type LastError = Arc<Mutex<Option<String>>>;

/// A listening forward; stopped (with every open stream) on drop.
pub struct Forward {
    /// The local address, `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    last_error: LastError,
}

impl Forward {
    /// Listens on a free loopback port and forwards each connection to `port` of `pod`.
    pub async fn start(pods: Api<Pod>, pod: String, port: u16) -> Result<Forward, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let last_error = LastError::default();
        let task = tokio::spawn(accept_loop(listener, pods, pod, port, last_error.clone()));
        Ok(Forward { addr, task, last_error })
    }

    /// The last error a stream met (the API server's or the kubelet's), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open stream.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, pods: Api<Pod>, pod: String, port: u16, last_error: LastError) {
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    streams.spawn(forward_one(conn, pods.clone(), pod.clone(), port, last_error.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "port-forward listener failed");
                    return;
                }
            },
            // Reap finished streams so the set stays as large as the open connections.
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}

/// Copies one connection both ways over a new port-forward stream; a failure closes the
/// connection (the client sees a reset and counts an error).
async fn forward_one(mut conn: TcpStream, pods: Api<Pod>, pod: String, port: u16, last_error: LastError) {
    let record = |e: String| {
        tracing::debug!(%pod, error = %e, "port-forward");
        if let Ok(mut last) = last_error.lock() {
            *last = Some(e);
        }
    };
    let mut pf = match pods.portforward(&pod, &[port]).await {
        Ok(pf) => pf,
        Err(e) => return record(format!("port-forward to pod {pod} failed: {e}")),
    };
    let Some(mut upstream) = pf.take_stream(port) else { return };
    let errors = pf.take_error(port);
    if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await {
        tracing::debug!(%pod, error = %e, "port-forward stream ended");
    }
    drop(upstream);
    if let Some(errors) = errors
        && let Ok(Some(e)) = tokio::time::timeout(std::time::Duration::from_millis(100), errors).await
    {
        record(e);
    }
    pf.abort();
}
