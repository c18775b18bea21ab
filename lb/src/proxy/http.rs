//! Peeks the first HTTP request head to take a hashing key (cookie or header), without consuming
//! it: the peeked bytes are replayed to the backend before the relay starts.

use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

/// Which part of the request head keys the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadKey {
    /// The value of one cookie of any `Cookie` header.
    Cookie(String),
    /// The value of a header (case-insensitive name).
    Header(String),
}

/// What the peek produced: the bytes read so far (to replay) and the key value, if found.
pub struct Peeked {
    pub bytes: Vec<u8>,
    pub key: Option<std::ops::Range<usize>>,
}

impl Peeked {
    pub fn key_bytes(&self) -> Option<&[u8]> {
        self.key.clone().map(|r| &self.bytes[r])
    }
}

/// Reads until a complete request head, `max_head` bytes, EOF or `timeout`, whichever is first.
/// A client that is not speaking HTTP, or whose head lacks the key, still gets proxied: the caller
/// falls back to a keyless choice.
pub async fn peek_key(
    client: &mut TcpStream,
    source: &HeadKey,
    max_head: usize,
    timeout: Duration,
) -> std::io::Result<Peeked> {
    let mut bytes: Vec<u8> = Vec::with_capacity(1024.min(max_head));
    let deadline = monoio::time::Instant::now() + timeout;
    let mut scan = HeadScan::default();
    loop {
        if bytes.len() >= max_head {
            return Ok(Peeked { bytes, key: None });
        }
        match scan.feed(&bytes, source) {
            HeadState::Complete(key) => return Ok(Peeked { bytes, key }),
            HeadState::NotHttp => return Ok(Peeked { bytes, key: None }),
            HeadState::Partial => {}
        }
        if bytes.capacity() == bytes.len() {
            bytes.reserve((bytes.len()).min(max_head - bytes.len()).max(512));
        }
        // monoio reads into a Vec from its start: read into the spare capacity instead.
        let filled = bytes.len();
        let read = monoio::time::timeout_at(deadline, client.read(bytes.slice_mut(filled..))).await;
        match read {
            Ok((res, slice)) => {
                bytes = slice.into_inner();
                if res? == 0 {
                    return Ok(Peeked { bytes, key: None });
                }
            }
            // A client that cannot send one request head in time is not served (as with
            // nginx's client_header_timeout); the cancelled read took the buffer with it.
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "client sent no complete request head in time",
                ))
            }
        }
    }
}

/// Follows a request head as it arrives, read by read.
#[derive(Default)]
struct HeadScan {
    /// Bytes handed to the parser so far, over all reads.
    examined: usize,
}

impl HeadScan {
    /// The state of the head in `buf`, which holds everything read so far.
    fn feed(&mut self, buf: &[u8], source: &HeadKey) -> HeadState {
        self.examined += buf.len();
        head_state(buf, source)
    }
}

enum HeadState {
    Complete(Option<std::ops::Range<usize>>),
    Partial,
    NotHttp,
}

fn head_state(buf: &[u8], source: &HeadKey) -> HeadState {
    let mut headers = [httparse::EMPTY_HEADER; lb_common::http::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            HeadState::Complete(find_key(req.headers, source).map(|v| range_in(buf, v)))
        }
        Ok(httparse::Status::Partial) => HeadState::Partial,
        Err(_) => HeadState::NotHttp,
    }
}

fn range_in(outer: &[u8], inner: &[u8]) -> std::ops::Range<usize> {
    let start = inner.as_ptr() as usize - outer.as_ptr() as usize;
    start..start + inner.len()
}

/// The key's value among the headers: a named header, or one cookie of any `Cookie` header.
pub fn find_key<'h>(headers: &[httparse::Header<'h>], source: &HeadKey) -> Option<&'h [u8]> {
    match source {
        HeadKey::Header(name) => lb_common::http::header(headers, name).filter(|v| !v.is_empty()),
        HeadKey::Cookie(name) => headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .flat_map(|h| h.value.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = trim(pair);
                let eq = pair.iter().position(|&b| b == b'=')?;
                (trim(&pair[..eq]) == name.as_bytes()).then(|| trim(&pair[eq + 1..]))
            })
            .filter(|v| !v.is_empty()),
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &[u8], source: &HeadKey) -> Option<Vec<u8>> {
        match head_state(raw, source) {
            HeadState::Complete(r) => r.map(|r| raw[r].to_vec()),
            _ => panic!("head not complete"),
        }
    }

    #[test]
    fn cookie_key_is_found_among_several_cookies() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=1; session=abc123 ; b=2\r\n\r\n";
        assert_eq!(
            key(raw, &HeadKey::Cookie("session".into())),
            Some(b"abc123".to_vec())
        );
        assert_eq!(key(raw, &HeadKey::Cookie("sess".into())), None);
    }

    #[test]
    fn cookie_key_is_found_in_a_second_cookie_header() {
        let raw = b"GET / HTTP/1.1\r\nCookie: a=1\r\ncookie: user=u7\r\n\r\n";
        assert_eq!(
            key(raw, &HeadKey::Cookie("user".into())),
            Some(b"u7".to_vec())
        );
    }

    #[test]
    fn header_key_is_case_insensitive_and_empty_means_none() {
        let raw = b"GET / HTTP/1.1\r\nx-user: bob\r\nX-Empty:\r\n\r\n";
        assert_eq!(
            key(raw, &HeadKey::Header("X-User".into())),
            Some(b"bob".to_vec())
        );
        assert_eq!(key(raw, &HeadKey::Header("X-Empty".into())), None);
    }

    #[test]
    fn partial_and_non_http_heads_are_told_apart() {
        let src = HeadKey::Cookie("s".into());
        assert!(matches!(
            head_state(b"GET / HTTP/1.1\r\nHost:", &src),
            HeadState::Partial
        ));
        assert!(matches!(
            head_state(b"\x16\x03\x01\x02\x00", &src),
            HeadState::NotHttp
        ));
    }
}
