//! Addresses as backend definitions write them: IP addresses, CIDRs, `[v6]:port`, host names
//! (resolved now) and http(s) URLs whose credentials are dropped on the spot.
use std::{
    cell::Cell,
    net::{IpAddr, ToSocketAddrs},
    sync::atomic::{AtomicBool, Ordering},
};

/// Whether host names are resolved (on, but for fuzzing: the resolver is not under test, and a
/// lookup may wait out its timeout).
pub static RESOLVE: AtomicBool = AtomicBool::new(true);

use ipnet::IpNet;

use super::Dest;

thread_local! {
    /// Host names this thread was asked for: a reading that needed one is not kept by
    /// [`super::Reads`], since the name may resolve differently next time.
    static HOST_NAMES: Cell<u64> = const { Cell::new(0) };
}

/// How many host names this thread has been asked to resolve.
pub(super) fn host_names() -> u64 {
    HOST_NAMES.with(Cell::get)
}

/// `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:443`, `host`, `host:443`, or a
/// CIDR. Host names resolve now (through the system resolver, /etc/hosts included).
pub fn endpoint(s: &str, field: &str, default_port: Option<u16>) -> Result<Vec<Dest>, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(vec![Dest {
            net: net.trunc(),
            port: default_port,
            field: field.into(),
        }]);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(vec![Dest {
            net: IpNet::from(ip),
            port: default_port,
            field: field.into(),
        }]);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("`{s}`: bad port"))?),
            None if after.is_empty() => default_port,
            None => return Err(format!("`{s}` is not an address")),
        };
        (h, port)
    } else if let Some((h, p)) = s.rsplit_once(':').filter(|(h, _)| !h.contains(':')) {
        (
            h,
            Some(p.parse::<u16>().map_err(|_| format!("`{s}`: bad port"))?),
        )
    } else {
        (s, default_port)
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![Dest {
            net: IpNet::from(ip),
            port,
            field: field.into(),
        }]);
    }
    HOST_NAMES.with(|n| n.set(n.get() + 1));
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return Err(format!("`{s}` is not an address or host name"));
    }
    if !RESOLVE.load(Ordering::Relaxed) {
        return Err(format!(
            "host name `{host}` not resolved (resolution is off)"
        ));
    }
    let mut addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("host name `{host}` does not resolve: {e}"))?
        .map(|a| a.ip())
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs
        .into_iter()
        .map(|ip| Dest {
            net: IpNet::from(ip),
            port,
            field: format!("{field} ({host} -> {ip})"),
        })
        .collect())
}

/// Host and port of an http(s) URL, dropping any user:password.
pub(super) fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (default, rest) = if let Some(r) = url.strip_prefix("https://") {
        (443, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (80, r)
    } else {
        return None;
    };
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        (
            h.to_string(),
            after
                .strip_prefix(':')
                .map_or(Some(default), |p| p.parse().ok())?,
        )
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (hostport.to_string(), default),
        }
    };
    (!host.is_empty()).then_some((host, port))
}

pub(super) fn base64_decode(s: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let d = endpoint("[2001:db8::5]:8443", "managementLIF", None).unwrap();
        assert_eq!(d[0].net.to_string(), "2001:db8::5/128");
        assert_eq!(d[0].port, Some(8443));
        assert_eq!(endpoint("[2001:db8::5]", "f", None).unwrap()[0].port, None);
        assert_eq!(
            endpoint("2001:db8::5", "f", None).unwrap()[0]
                .net
                .to_string(),
            "2001:db8::5/128"
        );
        assert_eq!(
            endpoint("198.51.100.7:3260", "SVIP", Some(3260)).unwrap()[0].port,
            Some(3260)
        );
        assert_eq!(
            endpoint("198.51.100.7", "SVIP", Some(3260)).unwrap()[0].port,
            Some(3260)
        );
        let l = endpoint("localhost", "managementLIF", None).unwrap();
        assert!(l.iter().any(|d| d.net.addr().is_loopback()), "{l:?}");
        assert!(l[0].field.contains("localhost ->"), "{l:?}");
        assert!(
            endpoint("no-such-host.invalid", "f", None)
                .unwrap_err()
                .contains("does not resolve")
        );
        assert!(endpoint("bad host!", "f", None).is_err());
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            url_host_port("https://admin:secret@192.0.2.9/json-rpc/8.0"),
            Some(("192.0.2.9".into(), 443))
        );
        assert_eq!(
            url_host_port("https://u:p@[2001:db8::9]:8443/x"),
            Some(("2001:db8::9".into(), 8443))
        );
        assert_eq!(url_host_port("ftp://x"), None);
        assert_eq!(
            base64_decode("aHR0cHM6Ly91OnBAMTkyLjAuMi45L2pzb24tcnBjLzguMA==").as_deref(),
            Some("https://u:p@192.0.2.9/json-rpc/8.0")
        );
    }
}
