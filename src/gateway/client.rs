//! Who the client is, by address: the TCP peer, or, when the peer is one of `trusted_proxies`,
//! the address that proxy names: in a PROXY protocol v2 header (`proxy_protocol = true`, read
//! before anything else on the connection) or in `X-Forwarded-For` (per request). An untrusted
//! peer's headers are never believed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::limits::Limits;

/// What every request on a connection knows of its client (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The client address as known when the connection was accepted.
    pub client: IpAddr,
    /// True when the peer is a trusted proxy that names clients per request (`X-Forwarded-For`):
    /// then the address is counted per request, not per connection.
    pub forwarded: bool,
}

impl ConnInfo {
    /// The client address of a request on this connection.
    pub fn client_of(&self, headers: &HeaderMap, limits: &Limits) -> IpAddr {
        if !self.forwarded {
            return self.client;
        }
        forwarded_for(headers, limits).unwrap_or(self.client)
    }
}

/// The client named by `X-Forwarded-For`: walking from the right (the entry our proxy added),
/// the first address that is not itself a trusted proxy. `None` when there is no such header or
/// an entry is not an address.
fn forwarded_for(headers: &HeaderMap, limits: &Limits) -> Option<IpAddr> {
    let mut last = None;
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let ip: IpAddr = entry.trim().parse().ok()?;
        let ip = ip.to_canonical();
        if !limits.is_trusted_proxy(ip) {
            return Some(ip);
        }
        last = Some(ip);
    }
    last
}

/// Why a PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// Not a PROXY protocol v2 header.
    #[error("not a PROXY protocol v2 header")]
    Malformed,
    /// The header did not arrive in time, or the connection failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// The v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Most address bytes accepted after the fixed header (TLVs included).
const MAX_LEN: usize = 1024;
/// Time allowed for the header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a PROXY protocol v2 header (exactly its bytes, nothing after) and returns the source
/// address it names; `None` for a `LOCAL` command or an unspecified family (the proxy's own
/// health check), whose client is the peer itself.
pub async fn read_proxy_header(stream: &mut TcpStream) -> Result<Option<IpAddr>, ProxyHeaderError> {
    let read = async {
        let mut head = [0u8; 16];
        stream.read_exact(&mut head).await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > MAX_LEN {
            return Err(ProxyHeaderError::Malformed);
        }
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await?;
        parse_proxy_header(&head, &rest)
    };
    match tokio::time::timeout(HEADER_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Err(ProxyHeaderError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Parses the fixed 16 bytes and what follows them.
fn parse_proxy_header(head: &[u8; 16], rest: &[u8]) -> Result<Option<IpAddr>, ProxyHeaderError> {
    if head[..12] != SIGNATURE || head[12] >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed);
    }
    match head[12] & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        _ => return Err(ProxyHeaderError::Malformed),
    }
    match head[13] >> 4 {
        0 => Ok(None),
        1 => {
            let a: [u8; 4] = rest
                .get(..4)
                .ok_or(ProxyHeaderError::Malformed)?
                .try_into()
                .unwrap_or_default();
            Ok(Some(IpAddr::V4(Ipv4Addr::from(a))))
        }
        2 => {
            let a: [u8; 16] = rest
                .get(..16)
                .ok_or(ProxyHeaderError::Malformed)?
                .try_into()
                .unwrap_or_default();
            Ok(Some(IpAddr::V6(Ipv6Addr::from(a)).to_canonical()))
        }
        3 => Ok(None), // AF_UNIX: no address to count by
        _ => Err(ProxyHeaderError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::limits::Cidr;

    fn limits(trusted: &[&str]) -> Limits {
        Limits {
            write_timeout: Duration::from_secs(10),
            max_connections_per_ip: 1,
            connection_rate_per_ip: 1,
            trusted_proxies: trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            proxy_protocol: false,
            ticket_rate_per_ip: 1,
            ticket_rate_per_user: 1,
        }
    }

    #[test]
    fn forwarded_for_names_the_first_untrusted_address_from_the_right() {
        let l = limits(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 192.0.2.7, 10.0.0.2".parse().unwrap(),
        );
        let info = ConnInfo {
            client: "10.0.0.1".parse().unwrap(),
            forwarded: true,
        };
        // The leftmost entry is the client's own claim: never believed past an untrusted hop.
        assert_eq!(
            info.client_of(&h, &l),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let direct = ConnInfo {
            forwarded: false,
            ..info
        };
        assert_eq!(
            direct.client_of(&h, &l),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        h.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(
            info.client_of(&h, &l),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    fn header(cmd: u8, fam: u8, addr: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&SIGNATURE);
        head[12] = 0x20 | cmd;
        head[13] = fam << 4 | 1;
        head[14..].copy_from_slice(&(addr.len() as u16).to_be_bytes());
        (head, addr.to_vec())
    }

    #[test]
    fn proxy_v2_headers_give_their_source_address() {
        let (h, r) = header(1, 1, &[192, 0, 2, 9, 10, 0, 0, 1, 0, 80, 1, 187]);
        let ip = parse_proxy_header(&h, &r).unwrap();
        assert_eq!(ip, Some("192.0.2.9".parse().unwrap()));
        let (h, r) = header(0, 0, &[]);
        assert_eq!(parse_proxy_header(&h, &r).unwrap(), None, "LOCAL");
        let mut v6 = vec![0u8; 36];
        v6[..16].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        let (h, r) = header(1, 2, &v6);
        assert_eq!(
            parse_proxy_header(&h, &r).unwrap(),
            Some("2001:db8::5".parse().unwrap())
        );
    }

    #[test]
    fn malformed_proxy_headers_are_refused() {
        let (mut h, r) = header(1, 1, &[1, 2, 3]);
        assert!(parse_proxy_header(&h, &r).is_err(), "short address");
        h[0] = b'G';
        assert!(parse_proxy_header(&h, &[0; 12]).is_err(), "no signature");
        let (mut h, r) = header(1, 1, &[0; 12]);
        h[12] = 0x11;
        assert!(parse_proxy_header(&h, &r).is_err(), "version 1 bits");
    }
}
