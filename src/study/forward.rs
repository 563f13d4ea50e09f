//! A local port that reaches a pod through the API server's port-forward subresource (what
//! `kubectl port-forward` does), so `oim bench` can measure a candidate from outside the cluster
//! without a Service of type LoadBalancer, an Ingress or a route to pod IPs.
//!
//! Every accepted TCP connection gets its own port-forward stream (one WebSocket through the API
//! server to the kubelet), so the benchmark's concurrent keep-alive connections map one to one
//! onto streams.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A listening forward; stopped (with every open stream) on drop.
pub struct Forward {
    /// The local address, `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forward {
    /// Listens on a free loopback port and forwards each connection to `port` of `pod`.
    pub async fn start(pods: Api<Pod>, pod: String, port: u16) -> Result<Forward, String> {
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen on 127.0.0.1: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let task = tokio::spawn(accept_loop(listener, pods, pod, port));
        Ok(Forward { addr, task })
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

async fn accept_loop(listener: TcpListener, pods: Api<Pod>, pod: String, port: u16) {
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    streams.spawn(forward_one(conn, pods.clone(), pod.clone(), port));
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
async fn forward_one(mut conn: TcpStream, pods: Api<Pod>, pod: String, port: u16) {
    let mut pf = match pods.portforward(&pod, &[port]).await {
        Ok(pf) => pf,
        Err(e) => {
            tracing::warn!(%pod, error = %e, "port-forward failed");
            return;
        }
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
        tracing::warn!(%pod, error = %e, "the kubelet reported a port-forward error");
    }
    pf.abort();
}
