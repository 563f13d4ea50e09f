//! A fake Hugging Face hub on 127.0.0.1 shared by the tests that read one (`oim download`,
//! `oim profiles select --from-hub`, the operator's model facts): a server in a thread of its
//! own answering each request with a handler, and the model fixtures it serves.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

/// A response body.
pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// A whole body.
pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed()
}

/// A JSON error answer with `code`, as the hub sends.
pub(crate) fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(format!("{{\"error\": \"{code}\"}}")));
    *r.status_mut() = code;
    r
}

/// `config.json` and `model.safetensors.index.json` of real models (fields copied from the hub).
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

/// A fixture file of `repo`, as `GET /<repo>/resolve/<rev>/<file>` serves it.
pub(crate) fn fixture(repo: &str, file: &str) -> Option<Vec<u8>> {
    std::fs::read(fixtures().join(repo).join(file)).ok()
}

/// Starts a server on a free loopback port in a thread of its own (so it outlives the test's
/// runtime and serves child processes); returns `http://127.0.0.1:PORT`.
pub(crate) fn start<F>(handler: F) -> String
where
    F: Fn(&Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let handler = std::sync::Arc::new(handler);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
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
    });
    format!("http://{addr}")
}
