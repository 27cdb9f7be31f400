//! Finding 2: connections that never deliver a request head — silent, a
//! partial HTTP/2 preface, an HTTP/2 connection that only sends its
//! settings — are closed by the header read timeout and cannot use up
//! `server.max_connections`; idle HTTP/2 keep-alive connections are closed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::{closed_within, raw_send};
use crate::harness::Server;

fn few_slots() -> Server {
    super::server()
        .env("GATEHOUSE__SERVER__MAX_CONNECTIONS", 3)
        .env("GATEHOUSE__SERVER__HEADER_READ_TIMEOUT_MS", 500)
        .start()
}

/// A normal request on a connection of its own gets its answer within 3 s.
async fn still_served(s: &Server) {
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = Instant::now();
    let r = fresh.get(s.url("/api/v1/monitoring/health")).send().await;
    match r {
        Ok(r) => assert_eq!(r.status().as_u16(), 200),
        Err(e) => panic!(
            "a normal request was not served within 3 s ({:?}): {e}",
            started.elapsed()
        ),
    }
}

/// Opens three connections that send `bytes` and then nothing, and checks
/// that the service keeps answering and each of them is closed in time.
async fn silent_sockets_do_not_stop_the_service(bytes: &[u8], closed_in: Duration) {
    let s = few_slots();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push((raw_send(&s, bytes).await, Instant::now()));
    }
    let served = still_served(&s);
    let closes = futures::future::join_all(sockets.iter_mut().map(|(socket, opened)| {
        let left = closed_in.saturating_sub(opened.elapsed());
        async move { closed_within(socket, left).await }
    }));
    let ((), closed) = tokio::join!(served, closes);
    assert!(
        closed.iter().all(|c| *c),
        "silent sockets left open after {closed_in:?}: {closed:?}"
    );
}

#[tokio::test]
async fn sockets_that_send_nothing_are_closed_and_do_not_exhaust_connections() {
    silent_sockets_do_not_stop_the_service(b"", Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed_and_does_not_exhaust_connections() {
    silent_sockets_do_not_stop_the_service(b"PRI * HTTP/2.0\r\n", Duration::from_secs(2)).await;
}

/// The whole HTTP/2 client preface and an empty SETTINGS frame: a protocol is
/// known, but no request head ever comes.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test]
async fn http2_connections_without_a_request_do_not_exhaust_connections() {
    silent_sockets_do_not_stop_the_service(H2_PREFACE_AND_SETTINGS, Duration::from_secs(3)).await;
}

#[tokio::test]
async fn an_idle_http2_keep_alive_connection_is_closed() {
    let s = super::server()
        .env("GATEHOUSE__SERVER__IDLE_TIMEOUT_MS", 1000)
        .start();
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(s.url("/api/v1/monitoring/health"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("HTTP/2 request");
    assert_eq!(response.status().as_u16(), 200);
    response.into_body().collect().await.expect("body");
    let idle_since = Instant::now();

    // The sender stays alive, so only the server can end the connection.
    let ended = tokio::time::timeout(Duration::from_secs(3), connection).await;
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection was still open after {:?}",
        idle_since.elapsed()
    );
    drop(sender);
}
