//! Limits against hostile or broken clients, validated: how long a write may stall, how many
//! connections (and how many new ones per second) one client address may have, how often one
//! address or one user may mint tickets, and which proxies may name the client address.

use std::net::IpAddr;
use std::time::Duration;

use super::raw::{
    CONNECTION_RATE_PER_IP, MAX_CONNECTIONS_PER_IP, RawConfig, TICKET_RATE_PER_IP,
    TICKET_RATE_PER_USER, TRUSTED_PROXIES, WRITE_TIMEOUT_SECS,
};
use super::{ConfigError, count, invalid, per_sec, secs};

/// The validated limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A pending write (WebSocket or HTTP) that makes no progress for this long drops its
    /// connection.
    pub write_timeout: Duration,
    /// TCP connections one client address may hold (429 beyond).
    pub max_connections_per_ip: usize,
    /// New TCP connections per second per client address (a bucket of twice this; 429 beyond).
    pub connection_rate_per_ip: u32,
    /// Proxies whose `X-Forwarded-For` (or PROXY header) names the client.
    pub trusted_proxies: Vec<Cidr>,
    /// Trusted proxies open every connection with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
    /// Tickets per second per client address (a bucket of twice this; 429 beyond).
    pub ticket_rate_per_ip: u32,
    /// Tickets per second per user (a bucket of twice this; 429 beyond).
    pub ticket_rate_per_user: u32,
}

impl Limits {
    /// True when connections from `ip` come through a proxy that names the client.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// An address block, e.g. `10.0.0.0/8` or `fd00::/8`; a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n` or a bare address.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().ok()?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net, bits })
    }

    /// True when `ip` (canonical: IPv4-mapped IPv6 as IPv4) is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let keep = |len: u32| {
            if self.bits == 0 {
                0
            } else {
                u128::MAX << (len - u32::from(self.bits))
            }
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = keep(32) as u32;
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = keep(128);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }
}

/// Validates the limit keys of `raw` (which it takes from).
pub(super) fn validate(raw: &mut RawConfig) -> Result<Limits, ConfigError> {
    let trusted_proxies = raw
        .trusted_proxies
        .take()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            Cidr::parse(s).ok_or_else(|| {
                invalid(
                    TRUSTED_PROXIES,
                    format!("{s:?} is not an address or CIDR block (e.g. 10.0.0.0/8)"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let proxy_protocol = raw.proxy_protocol.take().unwrap_or(false);
    if proxy_protocol && trusted_proxies.is_empty() {
        return Err(invalid(
            super::raw::PROXY_PROTOCOL,
            "needs trusted_proxies: the PROXY header is read only from those addresses",
        ));
    }
    Ok(Limits {
        write_timeout: secs(WRITE_TIMEOUT_SECS, raw.write_timeout_secs, 10, 1, 600)?,
        max_connections_per_ip: count(
            MAX_CONNECTIONS_PER_IP,
            raw.max_connections_per_ip,
            1000,
            (1, u64::MAX),
            "a number of connections",
        )?,
        connection_rate_per_ip: per_sec(
            CONNECTION_RATE_PER_IP,
            raw.connection_rate_per_ip,
            50,
            "a number of new connections per second",
        )?,
        trusted_proxies,
        proxy_protocol,
        ticket_rate_per_ip: per_sec(
            TICKET_RATE_PER_IP,
            raw.ticket_rate_per_ip,
            50,
            "a number of tickets per second",
        )?,
        ticket_rate_per_user: per_sec(
            TICKET_RATE_PER_USER,
            raw.ticket_rate_per_user,
            10,
            "a number of tickets per second",
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_contain_their_addresses_and_no_others() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.9".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        // An IPv4-mapped block is an IPv4 block.
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").is_none();
        assert!(
            mapped,
            "a mapped block with IPv6 bits is refused, not misread"
        );
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for bad in ["10.0.0.0/33", "10.0.0/8", "::/129", "x", "10.0.0.0/-1", ""] {
            assert!(Cidr::parse(bad).is_none(), "{bad:?}");
        }
    }
}
