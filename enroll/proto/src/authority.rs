//! The `host[:port]` part of an http or https URL, read the same way by the
//! enrollment client and the agent's update downloads. Errors are the reason only;
//! each caller says which URL and what it expects.

use std::net::Ipv6Addr;

/// Host and port of `host`, `host:port`, `[v6]` or `[v6]:port` (`default_port` when
/// none is given). The host is a name or address of letters, digits, `.`, `-` and `_`,
/// or an IPv6 address in brackets (returned without them); the port is 1-65535 in
/// digits. User information (`user@`) is refused: it would end up in logs.
pub fn parse(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    if authority.contains('@') {
        return Err("it has user information (`@`); give host and port only".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("`[` of an IPv6 address without `]`")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| format!("{addr:?} in brackets is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{after:?} after `]` is not `:PORT`"))?,
            ),
        };
        (addr.to_string(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("an IPv6 address must be in brackets: [ADDR]:PORT".into());
        }
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!("the host contains {c:?}"));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("port {p:?} is not a number 1-65535")),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn hosts_addresses_and_ports() {
        let ok = [
            ("h", ("h", 443)),
            ("h:8443", ("h", 8443)),
            ("10.0.2.2:80", ("10.0.2.2", 80)),
            ("[::1]", ("::1", 443)),
            ("[fe80::1]:1", ("fe80::1", 1)),
            ("a-b.c_d", ("a-b.c_d", 443)),
        ];
        for (text, (host, port)) in ok {
            assert_eq!(parse(text, 443), Ok((host.to_string(), port)), "{text}");
        }
    }

    #[test]
    fn each_refusal_says_why() {
        let bad = [
            ("u@h", "user information"),
            ("::1:8443", "must be in brackets"),
            ("[::1", "without `]`"),
            ("[zz]:1", "not an IPv6 address"),
            ("[::1]8443", "is not `:PORT`"),
            (":1", "host is empty"),
            ("", "host is empty"),
            ("h:0", "port \"0\""),
            ("h:65536", "port \"65536\""),
            ("h:+1", "port \"+1\""),
            ("h:", "port \"\""),
            ("h a", "host contains ' '"),
        ];
        for (text, want) in bad {
            let e = parse(text, 443).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
