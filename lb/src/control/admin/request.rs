//! Reading one admin request: bounded in size, parsed once complete, with checked arithmetic on
//! every length a client sends.

/// Largest request (head and body) the admin API reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What the routes and the guard need of a request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path as sent, without the query.
    pub path: String,
    /// Its segments, percent-decoded.
    pub segments: Vec<String>,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub content_type: Option<String>,
    pub authorization: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

impl Request {
    /// POST, PUT, DELETE and anything else that is not a read.
    pub fn changes_state(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD" | "OPTIONS")
    }

    pub fn is_health(&self) -> bool {
        self.method == "GET" && self.segments == ["health"]
    }
}

pub enum Parsed {
    Complete(Request),
    Partial,
    /// A status and why.
    Bad(u16, String),
}

/// Parses `buf` once it holds a whole request.
pub fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            return Parsed::Bad(413, "request too large".into())
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Bad(400, format!("malformed request: {e}")),
    };
    let len = match lb_common::http::content_length(req.headers) {
        Ok(l) => l.unwrap_or(0),
        Err(e) => return Parsed::Bad(400, e.to_string()),
    };
    // A Content-Length near 2^64 must not wrap: checked, and bounded before any use.
    let total = match usize::try_from(len)
        .ok()
        .and_then(|l| head_len.checked_add(l))
    {
        Some(t) if t <= MAX_REQUEST => t,
        Some(_) => return Parsed::Bad(413, format!("request too large (Content-Length {len})")),
        None => return Parsed::Bad(400, format!("invalid Content-Length {len}")),
    };
    if buf.len() < total {
        return Parsed::Partial;
    }
    let text = |name: &str| {
        lb_common::http::header(req.headers, name)
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
    };
    let raw_path = req.path.unwrap_or("/");
    let path = raw_path.split('?').next().unwrap_or("/").to_string();
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    Parsed::Complete(Request {
        method: req.method.unwrap_or("").to_string(),
        segments,
        path,
        host: text("host"),
        origin: text("origin"),
        content_type: text("content-type"),
        authorization: lb_common::http::header(req.headers, "authorization").map(<[u8]>::to_vec),
        body: buf[head_len..total].to_vec(),
    })
}

/// `%XX` sequences decoded; invalid ones and non-UTF-8 results kept as sent (lossy).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> Request {
        match parse(raw) {
            Parsed::Complete(r) => r,
            Parsed::Partial => panic!("partial"),
            Parsed::Bad(c, m) => panic!("{c} {m}"),
        }
    }

    #[test]
    fn a_request_is_complete_only_with_its_whole_body() {
        let raw = b"POST /lb/backends HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab";
        assert!(matches!(parse(raw), Parsed::Partial));
        let r = complete(b"POST /lb/backends?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9900\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(r.segments, ["lb", "backends"]);
        assert_eq!(r.host.as_deref(), Some("127.0.0.1:9900"));
        assert_eq!(r.body, b"{}");
        assert!(r.changes_state());
    }

    #[test]
    fn a_huge_content_length_is_refused_without_overflow() {
        for (len, status) in [
            ("18446744073709551615", 400),
            ("18446744073709551600", 400),
            ("18446744073709551000", 413),
            ("65537", 413),
        ] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {len}\r\n\r\n");
            match parse(raw.as_bytes()) {
                Parsed::Bad(s, _) => assert_eq!(s, status, "{len}"),
                _ => panic!("{len} accepted"),
            }
        }
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        let r = complete(b"DELETE /lb/backends/a%20b/%zz/%41 HTTP/1.1\r\n\r\n");
        assert_eq!(r.segments, ["lb", "backends", "a b", "%zz", "A"]);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
    }

    #[test]
    fn random_bytes_never_panic_the_parser() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (x % 300) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(match x % 4 {
                    0 => b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\n%"[(x >> 8) as usize % 38],
                    _ => (x >> 16) as u8,
                });
            }
            let _ = parse(&buf);
        }
    }
}
