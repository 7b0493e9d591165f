//! An http(s) download read as one stream: redirects followed, the answer checked, and
//! a break resumed from where it stopped (see the module documentation of
//! [`super`]).

use std::io::{self, BufReader, Read};

use super::connect::{io_text, tls_inner};
use super::{
    parse_content_range, read_head, wire, BundleStream, Conn, ConnectError, Connector, FetchError,
    FetchOptions, Head, Scheme, Url, MAX_REDIRECTS,
};

/// Sent as `User-Agent`, so server logs name the agent.
const USER_AGENT: &str = concat!("kiln-agent/", env!("CARGO_PKG_VERSION"));

/// The body of one response being read.
struct Body {
    reader: BufReader<Box<dyn Conn>>,
}

/// One attempt's failure: worth retrying, or final.
enum Attempt {
    Retry(String),
    Fatal(FetchError),
}

/// An http(s) download that resumes after a break.
pub struct HttpStream<C: Connector> {
    given: String,
    url: Url,
    connector: C,
    opts: FetchOptions,
    total: u64,
    offset: u64,
    body: Option<Body>,
    opened: bool,
    committed: bool,
    notes: Vec<String>,
}

impl<C: Connector> HttpStream<C> {
    /// Connects and reads the answer's head (following redirects); the body is read as
    /// the stream is. `given` is the URL as the user wrote it, for messages.
    pub fn open(
        given: &str,
        url: Url,
        connector: C,
        opts: &FetchOptions,
    ) -> Result<HttpStream<C>, FetchError> {
        let mut s = HttpStream {
            given: given.to_string(),
            url,
            connector,
            opts: opts.clone(),
            total: 0,
            offset: 0,
            body: None,
            opened: false,
            committed: false,
            notes: Vec::new(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match s.request(0) {
                Ok(()) => return Ok(s),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(err)) if attempt >= s.opts.attempts.max(1) => {
                    return Err(FetchError::Unreachable {
                        url: s.given,
                        attempts: attempt,
                        err,
                    })
                }
                Err(Attempt::Retry(_)) => {
                    let d = s.opts.backoff.delay(attempt - 1, 0);
                    s.connector.sleep(d);
                }
            }
        }
    }

    /// The URL being read (after redirects).
    #[cfg(test)]
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends a GET (with a Range from `offset` when it is not 0) and reads the head,
    /// following redirects; leaves the body ready to read from `offset`.
    fn request(&mut self, offset: u64) -> Result<(), Attempt> {
        let mut redirects = 0;
        loop {
            let url_text = self.url.text();
            let mut conn = self.connector.connect(&self.url).map_err(|e| match e {
                ConnectError::Network(m) => Attempt::Retry(m),
                ConnectError::Tls(err) => Attempt::Fatal(FetchError::Tls {
                    url: self.given.clone(),
                    err,
                }),
                ConnectError::CaBundle(err) => Attempt::Fatal(FetchError::CaBundle {
                    path: self.opts.ca_file.clone(),
                    err,
                }),
            })?;
            let range = format!("bytes={offset}-");
            let mut headers = vec![("User-Agent", USER_AGENT), ("Accept", "*/*")];
            if offset > 0 {
                headers.push(("Range", range.as_str()));
            }
            let host = self.url.authority();
            let req = wire::Request {
                method: "GET",
                path: &self.url.path,
                host: &host,
                authorization: None,
                body: None,
            };
            let given = self.given.clone();
            let io_fail = |what: &str, e: io::Error| match tls_inner(&e) {
                Some(t) => Attempt::Fatal(FetchError::Tls {
                    url: given.clone(),
                    err: t.to_string(),
                }),
                None if e.kind() == io::ErrorKind::InvalidData => {
                    Attempt::Fatal(FetchError::Protocol {
                        url: given.clone(),
                        what: format!("{what}: {e}"),
                    })
                }
                None => Attempt::Retry(format!("{what}: {}", io_text(&e))),
            };
            wire::write_request_with(&mut conn, &req, &headers)
                .map_err(|e| io_fail("sending the request", e))?;
            let mut reader = BufReader::with_capacity(256 * 1024, conn);
            let head = read_head(&mut reader).map_err(|e| io_fail("reading the answer", e))?;
            if matches!(head.status, 301 | 302 | 303 | 307 | 308) {
                redirects += 1;
                let location = head.header("location").unwrap_or_default().to_string();
                if location.is_empty() || redirects > MAX_REDIRECTS {
                    return Err(Attempt::Fatal(FetchError::Protocol {
                        url: self.given.clone(),
                        what: if location.is_empty() {
                            format!("HTTP {} without a Location header", head.status)
                        } else {
                            format!("more than {MAX_REDIRECTS} redirects")
                        },
                    }));
                }
                let next = self.url.join(&location).map_err(Attempt::Fatal)?;
                if self.url.scheme == Scheme::Https && next.scheme == Scheme::Http {
                    return Err(Attempt::Fatal(FetchError::Protocol {
                        url: self.given.clone(),
                        what: format!("refusing the redirect from https to {}", next.text()),
                    }));
                }
                self.url = next;
                continue;
            }
            return self.accept(offset, &url_text, head, reader);
        }
    }

    /// Checks the answer to a request from `offset` and keeps its body.
    fn accept(
        &mut self,
        offset: u64,
        url_text: &str,
        head: Head,
        mut reader: BufReader<Box<dyn Conn>>,
    ) -> Result<(), Attempt> {
        let protocol = |what: String| {
            Attempt::Fatal(FetchError::Protocol {
                url: self.given.clone(),
                what,
            })
        };
        let length = match head.header("content-length") {
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| protocol(format!("Content-Length {v:?} is not a number")))?,
            ),
            None => None,
        };
        match head.status {
            200 if offset == 0 => {
                let Some(n) = length else {
                    return Err(protocol(
                        "the answer has no Content-Length (a bundle must be served as a file \
                         of known size, not chunked or compressed on the fly)"
                            .into(),
                    ));
                };
                if self.opened && n != self.total {
                    return Err(Attempt::Fatal(FetchError::Changed {
                        url: self.given.clone(),
                        what: format!("it was {} bytes and is now {n}", self.total),
                    }));
                }
                self.total = n;
            }
            200 => {
                // The server ignored the range: the whole file again.
                if self.committed {
                    return Err(Attempt::Fatal(FetchError::NoRanges {
                        url: self.given.clone(),
                        offset,
                    }));
                }
                if length != Some(self.total) {
                    return Err(Attempt::Fatal(FetchError::Changed {
                        url: self.given.clone(),
                        what: format!(
                            "it was {} bytes and is now {}",
                            self.total,
                            length.map_or("of unknown length".into(), |n| n.to_string())
                        ),
                    }));
                }
                self.notes.push(format!(
                    "{url_text} ignores range requests: reading it again from the start and \
                     skipping the {offset} bytes already read"
                ));
                let skipped = io::copy(&mut (&mut reader).take(offset), &mut io::sink())
                    .map_err(|e| Attempt::Retry(format!("skipping: {}", io_text(&e))))?;
                if skipped < offset {
                    return Err(Attempt::Retry(
                        "the connection closed while skipping what was already read".into(),
                    ));
                }
            }
            206 if offset > 0 => {
                let cr = head.header("content-range").unwrap_or_default();
                let Some((start, end, total)) = parse_content_range(cr) else {
                    return Err(protocol(format!(
                        "HTTP 206 with Content-Range {cr:?}, not \"bytes START-END/TOTAL\""
                    )));
                };
                if total != self.total || end + 1 != total {
                    return Err(Attempt::Fatal(FetchError::Changed {
                        url: self.given.clone(),
                        what: format!(
                            "asked for bytes {offset}- of {}, got Content-Range {cr:?}",
                            self.total
                        ),
                    }));
                }
                if start != offset {
                    return Err(protocol(format!(
                        "asked for bytes from {offset}, the answer starts at {start}"
                    )));
                }
            }
            416 if offset > 0 => {
                return Err(Attempt::Fatal(FetchError::Changed {
                    url: self.given.clone(),
                    what: format!(
                        "byte {offset} of {} is no longer there (HTTP 416)",
                        self.total
                    ),
                }))
            }
            s if s >= 500 => return Err(Attempt::Retry(format!("HTTP {s} {}", head.reason))),
            s => {
                return Err(Attempt::Fatal(FetchError::Status {
                    url: url_text.to_string(),
                    status: s,
                    reason: head.reason,
                }))
            }
        }
        self.offset = offset;
        self.opened = true;
        self.body = Some(Body { reader });
        Ok(())
    }

    /// Reconnects from the current offset, with backoff, after `first` broke the body.
    fn resume(&mut self, first: String) -> io::Result<()> {
        self.body = None;
        let mut last = first;
        for attempt in 1..self.opts.attempts.max(1) {
            let d = self.opts.backoff.delay(attempt - 1, 0);
            self.notes.push(format!(
                "the download broke after {} of {} bytes ({last}); resuming in {} s \
                 (attempt {} of {})",
                self.offset,
                self.total,
                d.as_secs_f32().ceil() as u64,
                attempt + 1,
                self.opts.attempts
            ));
            self.connector.sleep(d);
            match self.request(self.offset) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e.into_io()),
                Err(Attempt::Retry(m)) => last = m,
            }
        }
        Err(FetchError::Broken {
            url: self.given.clone(),
            offset: self.offset,
            total: self.total,
            attempts: self.opts.attempts,
            err: last,
        }
        .into_io())
    }
}

impl<C: Connector> Read for HttpStream<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.total - self.offset;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        loop {
            let result = match &mut self.body {
                Some(body) => body.reader.read(&mut buf[..want]),
                None => Err(io::Error::new(io::ErrorKind::NotConnected, "not connected")),
            };
            let broke = match result {
                Ok(0) => "the server closed the connection".to_string(),
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => match tls_inner(&e) {
                    Some(t) => format!("TLS: {t}"),
                    None => io_text(&e),
                },
            };
            self.resume(broke)?;
        }
    }
}

impl<C: Connector> BundleStream for HttpStream<C> {
    fn total_len(&self) -> u64 {
        self.total
    }

    fn describe(&self) -> String {
        self.given.clone()
    }

    fn committed(&mut self) {
        self.committed = true;
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}
