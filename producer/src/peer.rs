//! The sender's address as the ingest API can vouch for it.
//!
//! `X-Forwarded-For` is written by whoever sends the request, so only the hops added by proxies
//! we trust (`http.trusted_proxies`) are believed: walking the header from the right (the hop
//! nearest to us), the first address that is not a trusted proxy is the sender. Anything to its
//! left is the sender's own claim and ignored. Without trusted proxies the header is ignored.

use ipnet::IpNet;
use std::net::IpAddr;

/// The sender of a request that arrived from `peer` carrying these `X-Forwarded-For` values.
pub fn sender(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return canonical(peer);
    }
    let mut sender = canonical(peer);
    // Several headers count as one list in order (RFC 9110, 5.3).
    let hops = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // A garbled hop: what lies beyond it cannot be trusted either.
            break;
        };
        sender = canonical(ip);
        if !is_trusted(&ip) {
            break;
        }
    }
    sender
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1` or `[::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack socket reports) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peers_are_the_sender_whatever_they_forward() {
        assert_eq!(
            sender(ip("203.0.113.9"), &["1.1.1.1"], &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(sender(ip("10.0.0.2"), &["1.1.1.1"], &[]), ip("10.0.0.2"));
    }

    #[test]
    fn the_first_untrusted_hop_from_the_right_is_the_sender() {
        let trusted = nets(&["10.0.0.0/8", "192.168.1.1/32"]);
        // The client claimed 6.6.6.6; the edge proxy saw 198.51.100.7.
        assert_eq!(
            sender(
                ip("10.0.0.2"),
                &["6.6.6.6, 198.51.100.7", "192.168.1.1"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        assert_eq!(
            sender(ip("10.0.0.2"), &["[2001:db8::1]:443"], &trusted),
            ip("2001:db8::1")
        );
        assert_eq!(
            sender(ip("::ffff:10.0.0.2"), &["198.51.100.8:5000"], &trusted),
            ip("198.51.100.8")
        );
        // Only trusted hops: the leftmost of them.
        assert_eq!(
            sender(ip("10.0.0.2"), &["10.0.0.3"], &trusted),
            ip("10.0.0.3")
        );
        // A garbled hop stops the walk at the last good one.
        assert_eq!(
            sender(ip("10.0.0.2"), &["1.1.1.1, nonsense, 10.0.0.5"], &trusted),
            ip("10.0.0.5")
        );
        assert_eq!(sender(ip("10.0.0.2"), &[], &trusted), ip("10.0.0.2"));
    }
}
