//! A fake HTTP server on 127.0.0.1 for tests of bounded reads: each request is answered by a
//! handler that may return a body without end, a slow one, or a lie about its size.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};

/// A response body.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// A body that repeats `chunk` forever.
pub fn endless(chunk: &'static [u8]) -> Body {
    let s = futures::stream::repeat(chunk).map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c))));
    BodyExt::boxed(StreamBody::new(s))
}

/// A body that sends nothing for `wait`, then `b`.
pub fn delayed(wait: Duration, b: &'static [u8]) -> Body {
    let s = futures::stream::once(async move {
        tokio::time::sleep(wait).await;
        Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b)))
    });
    BodyExt::boxed(StreamBody::new(s))
}

/// A response with a status and body.
pub fn respond(status: u16, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r
}

/// Starts a server on a free loopback port in the current runtime; returns `127.0.0.1:PORT`.
pub async fn start<F>(handler: F) -> String
where
    F: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = handler(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr.to_string()
}
