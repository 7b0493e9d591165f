//! http(s) URLs as `update apply` takes them: parsed strictly enough that the request
//! line and the Host header cannot be forged from one, and joined with a redirect's
//! `Location`.

use super::FetchError;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// A parsed http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// http or https.
    pub scheme: Scheme,
    /// The host (an IPv6 address without brackets).
    pub host: String,
    /// The port (80 or 443 when the URL names none).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Scheme {
    /// 80 or 443.
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl Url {
    /// Parses `http[s]://host[:port][/path][?query]` (a fragment is dropped).
    pub fn parse(text: &str) -> Result<Url, FetchError> {
        let fail = |why: &str| {
            FetchError::BadUrl(format!(
                "bad URL {text:?}: {why} (expected http[s]://HOST[:PORT]/PATH)"
            ))
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(|| fail("no scheme"))?;
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            return Err(FetchError::BadUrl(format!(
                "cannot download {text:?}: only http:// and https:// URLs (or a local path) \
                 are supported"
            )));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if let Some(c) = path.chars().find(|c| c.is_ascii_control() || *c == ' ') {
            return Err(fail(&format!("the path contains {c:?}; percent-encode it")));
        }
        let (host, port) = kiln_enroll_proto::authority::parse(authority, scheme.default_port())
            .map_err(|why| fail(&why))?;
        Ok(Url {
            scheme,
            host,
            port,
            path,
        })
    }

    /// `host:port` as the Host header and messages write it.
    pub fn authority(&self) -> String {
        let default = self.scheme.default_port();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The URL as text.
    pub fn text(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }

    /// The target of a `Location` header: an absolute URL, or an absolute path on the
    /// same server.
    pub(super) fn join(&self, location: &str) -> Result<Url, FetchError> {
        if location.starts_with('/') && !location.starts_with("//") {
            return Url::parse(&format!(
                "{}://{}{location}",
                match self.scheme {
                    Scheme::Http => "http",
                    Scheme::Https => "https",
                },
                self.authority()
            ));
        }
        Url::parse(location)
    }
}
