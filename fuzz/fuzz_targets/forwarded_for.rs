//! Fuzzes `gatehouse::http::client_ip::client_ip` with `X-Forwarded-For`
//! values from the input (one per `\n`-separated line) behind a trusted peer.
//! Oracle: no panic, and the answer is the peer or an address written
//! literally (after trimming) as one hop of one of the header values.
#![no_main]

use std::net::IpAddr;
use std::sync::LazyLock;

use hyper::HeaderMap;
use hyper::header::HeaderValue;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

static TRUSTED: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    ["10.0.0.0/8", "fd00::/8"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
});

const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));

fuzz_target!(|data: &[u8]| {
    let trusted = &*TRUSTED;
    assert_eq!(trusted.len(), 2);

    let mut headers = HeaderMap::new();
    let mut values = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            values.push(value.clone());
            headers.append("x-forwarded-for", value);
        }
    }

    let ip = gatehouse::http::client_ip::client_ip(PEER, &headers, trusted);
    if ip == PEER {
        return;
    }
    let written = values.iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',')
                .any(|hop| hop.trim().parse::<IpAddr>().is_ok_and(|hop| hop == ip))
        })
    });
    assert!(written, "{ip} is neither the peer nor in {values:?}");
});
