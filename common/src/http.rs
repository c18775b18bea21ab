//! Minimal HTTP/1.x helpers shared by the backend (requests), loadgen (responses) and lb (admin).

use std::io::Write;

/// Largest request or response head we accept by default (same order as nginx's 8k buffers).
pub const DEFAULT_MAX_HEAD: usize = 8 * 1024;
/// Headers parsed per message; more than this is treated as a too-large head.
pub const MAX_HEADERS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("invalid Content-Length header")]
    BadContentLength,
    #[error("conflicting Content-Length headers")]
    ConflictingContentLength,
}

/// Standard reason phrase for the statuses this project writes.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// First header value with this name (case-insensitive).
pub fn header<'h>(headers: &[httparse::Header<'h>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The body length announced by `Content-Length`, if any. Repeated equal values are accepted
/// (RFC 9110 allows it); differing ones are an error, as is anything not a plain number.
pub fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, HeadError> {
    let mut found: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = std::str::from_utf8(h.value)
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(HeadError::BadContentLength)?;
        match found {
            Some(prev) if prev != v => return Err(HeadError::ConflictingContentLength),
            _ => found = Some(v),
        }
    }
    Ok(found)
}

/// True if the last transfer coding is `chunked`.
pub fn is_chunked(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(|v| {
            v.rsplit(',')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("chunked")
        })
        .unwrap_or(false)
}

/// Whether the connection stays open after this message: HTTP/1.1 unless `Connection: close`,
/// HTTP/1.0 only with `Connection: keep-alive`.
pub fn keep_alive(version: u8, headers: &[httparse::Header<'_>]) -> bool {
    let has_token = |token: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if version >= 1 {
        !has_token("close")
    } else {
        has_token("keep-alive")
    }
}

/// Appends a response head. `http10` answers an HTTP/1.0 client, which needs an explicit
/// `Connection: keep-alive` to keep the connection.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &[u8])],
    content_length: usize,
    keep_alive: bool,
    http10: bool,
) {
    let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
    let _ = write!(out, "{version} {status} {}\r\n", reason(status));
    for (name, value) in extra_headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let _ = write!(out, "Content-Length: {content_length}\r\n");
    match (keep_alive, http10) {
        (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (true, false) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete small response (errors, admin answers) with a text or JSON body.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    write_head(
        out,
        status,
        &[("Content-Type", content_type.as_bytes())],
        body.len(),
        keep_alive,
        false,
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> (u8, Vec<(String, Vec<u8>)>) {
        let mut hs = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut hs);
        req.parse(raw).unwrap();
        let v = req.version.unwrap();
        (
            v,
            req.headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        )
    }

    fn with_headers<R>(raw: &[u8], f: impl FnOnce(u8, &[httparse::Header<'_>]) -> R) -> R {
        let (v, owned) = parse(raw);
        let hs: Vec<httparse::Header<'_>> = owned
            .iter()
            .map(|(n, val)| httparse::Header {
                name: n,
                value: val,
            })
            .collect();
        f(v, &hs)
    }

    #[test]
    fn http11_keeps_alive_unless_told_to_close() {
        assert!(with_headers(b"GET / HTTP/1.1\r\n\r\n", keep_alive));
        assert!(!with_headers(
            b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n",
            keep_alive
        ));
    }

    #[test]
    fn http10_closes_unless_asked_to_keep_alive() {
        assert!(!with_headers(b"GET / HTTP/1.0\r\n\r\n", keep_alive));
        assert!(with_headers(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            keep_alive
        ));
    }

    #[test]
    fn content_length_rejects_garbage_and_conflicts_but_accepts_repeats() {
        let cl = |raw: &[u8]| with_headers(raw, |_, h| content_length(h));
        assert_eq!(cl(b"GET / HTTP/1.1\r\n\r\n"), Ok(None));
        assert_eq!(
            cl(b"GET / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Some(12))
        );
        assert_eq!(
            cl(b"GET / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"),
            Ok(Some(5))
        );
        assert_eq!(
            cl(b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Err(HeadError::ConflictingContentLength)
        );
        assert_eq!(
            cl(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(HeadError::BadContentLength)
        );
    }

    #[test]
    fn chunked_is_detected_only_as_the_last_coding() {
        assert!(with_headers(
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            |_, h| is_chunked(h)
        ));
        assert!(!with_headers(
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            |_, h| is_chunked(h)
        ));
    }

    #[test]
    fn written_heads_parse_back() {
        let mut out = Vec::new();
        write_head(&mut out, 200, &[("X-Server-Id", b"s1")], 5, false, false);
        out.extend_from_slice(b"hello");
        let mut hs = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut hs);
        let n = match resp.parse(&out).unwrap() {
            httparse::Status::Complete(n) => n,
            _ => panic!("incomplete"),
        };
        assert_eq!(resp.code, Some(200));
        assert_eq!(header(resp.headers, "x-server-id"), Some(&b"s1"[..]));
        assert_eq!(content_length(resp.headers), Ok(Some(5)));
        assert!(!keep_alive(1, resp.headers));
        assert_eq!(&out[n..], b"hello");
    }
}
