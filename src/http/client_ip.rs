//! Which address a request comes from.
//!
//! The socket peer, unless the peer is a trusted proxy: then `X-Forwarded-For`
//! is read right to left, skipping trusted proxies, and the first address that
//! is not one is the client. Everything left of it was written by the client
//! and is ignored, so nobody can choose their own rate-limit bucket.

use std::net::IpAddr;

use hyper::HeaderMap;
use ipnet::IpNet;

pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Later headers were appended by nearer proxies: walk them last to first.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.to_str().unwrap_or("").rsplit(','));
    for hop in hops {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip,
            // Garbage can only come from beyond the last trusted hop.
            Err(_) => return client,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&["1.2.3.4"]), &trusted),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn trusted_chain_yields_the_rightmost_untrusted_address() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["6.6.6.6, 198.51.100.7, 10.0.0.2"]);
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("198.51.100.7"));
        let split = headers(&["6.6.6.6", "198.51.100.7, 10.0.0.2"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &split, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_trusted_or_garbage_falls_back_to_the_nearest_known() {
        let trusted = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["10.0.0.3"]), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["junk, 10.0.0.3"]), &trusted),
            ip("10.0.0.3")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }
}
