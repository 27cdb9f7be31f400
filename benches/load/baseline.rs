//! The bare hyper baseline: what the same HTTP stack does with no work
//! behind it. Same runtime settings as Gatehouse (tokio multi-thread with the
//! default worker count, one per CPU), the same connection builder
//! (hyper-util's auto builder over `TokioIo`, `TCP_NODELAY`), and a JSON body
//! of the same size as Gatehouse's `/users/me` answer.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A JSON object of exactly `size` bytes (at least the bare object's size).
pub fn body_of_size(size: usize) -> Bytes {
    let head = r#"{"message":"hello from the bare hyper baseline","padding":""#;
    let tail = r#""}"#;
    let padding = size.saturating_sub(head.len() + tail.len());
    Bytes::from(format!("{head}{}{tail}", "x".repeat(padding)))
}

/// Serves forever on 127.0.0.1:0; says where on stderr.
pub fn serve(body_bytes: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let body = body_of_size(body_bytes);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the bound address");
        let mut stderr = std::io::stderr();
        let _ = writeln!(stderr, "listening on {addr}");
        let _ = stderr.flush();
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
}
