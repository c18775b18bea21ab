//! Peeks the first HTTP request head to take a hashing key (cookie or header), without consuming
//! it: the head stays in the connection's [`Prefix`], which is replayed to the backend before the
//! relay starts.

use std::ops::Range;

use monoio::net::TcpStream;

use super::prefix::{Prefix, PrefixError};

/// Which part of the request head keys the hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadKey {
    /// The value of one cookie of any `Cookie` header.
    Cookie(String),
    /// The value of a header (case-insensitive name).
    Header(String),
}

/// Reads into `prefix` until it holds a complete request head, is full, or the client closes;
/// returns where the key's value is in `prefix.data()`, if the head has it. The prefix may
/// already hold bytes (what followed a PROXY header): they are the start of the head.
///
/// A client that is not speaking HTTP, whose head is longer than the prefix's limit, or whose
/// head lacks the key, still gets proxied: the caller falls back to a keyless choice. The
/// prefix's deadline and the core's budget are errors ([`PrefixError`]): such a client is not
/// served.
pub async fn peek_key(
    prefix: &mut Prefix<'_>,
    client: &mut TcpStream,
    source: &HeadKey,
) -> std::io::Result<Option<Range<usize>>> {
    let mut scan = HeadScan::default();
    loop {
        match scan.feed(prefix.data(), source) {
            HeadState::Complete(key) => return Ok(key),
            HeadState::NotHttp => return Ok(None),
            HeadState::Partial => {}
        }
        match prefix.fill(client).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if matches!(PrefixError::of(&e), Some(PrefixError::Full(_))) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Parsed on every read while the head is this short, so that bytes that are not HTTP (a TLS
/// ClientHello, say) are told at once; beyond it only at the end of the first line.
const EARLY_PARSE: usize = 1024;

/// Follows a request head as it arrives, read by read, in time linear in its length: each read's
/// new bytes are searched for the blank line that ends the head, and the head is parsed once it
/// is complete (and while it is short, or when its first line ends, to tell non-HTTP early).
/// Parsing the whole buffer on every read instead was quadratic: a 256 KiB head in 1 KiB reads
/// had 34 MB parsed.
#[derive(Default)]
struct HeadScan {
    /// Bytes already searched for the end of the head.
    searched: usize,
    /// The first line ended and parsed as the start of a request.
    first_line: bool,
    /// Bytes searched or parsed so far, over all reads.
    examined: usize,
}

impl HeadScan {
    /// The state of the head in `buf`, which holds everything read so far.
    fn feed(&mut self, buf: &[u8], source: &HeadKey) -> HeadState {
        let from = self.searched.saturating_sub(3);
        let new = &buf[from..];
        self.examined += new.len();
        self.searched = buf.len();
        let ended =
            new.windows(4).any(|w| w == b"\r\n\r\n") || new.windows(2).any(|w| w == b"\n\n");
        let check_start = !self.first_line && (buf.len() <= EARLY_PARSE || new.contains(&b'\n'));
        if !ended && !check_start {
            return HeadState::Partial;
        }
        self.examined += buf.len();
        let state = head_state(buf, source);
        if matches!(state, HeadState::Partial) && buf.contains(&b'\n') {
            self.first_line = true;
        }
        state
    }
}

enum HeadState {
    Complete(Option<Range<usize>>),
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

fn range_in(outer: &[u8], inner: &[u8]) -> Range<usize> {
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
    fn a_head_arriving_in_small_reads_is_scanned_once_not_once_per_read() {
        let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
        head.resize(head.len() + 256 * 1024, b'a');
        head.extend_from_slice(b"\r\nCookie: sid=7\r\n\r\n");
        let src = HeadKey::Cookie("sid".into());
        let mut scan = HeadScan::default();
        let mut complete = None;
        for end in (1024..head.len()).step_by(1024).chain([head.len()]) {
            if let HeadState::Complete(k) = scan.feed(&head[..end], &src) {
                complete = Some(k.map(|r| head[r].to_vec()));
                break;
            }
        }
        assert_eq!(complete, Some(Some(b"7".to_vec())));
        assert!(
            scan.examined <= 3 * head.len(),
            "{} bytes examined for a {}-byte head that came in 1 KiB reads",
            scan.examined,
            head.len()
        );
    }

    #[test]
    fn every_split_of_a_head_gives_the_same_key_and_non_http_is_told_at_once() {
        let raw = b"GET /x HTTP/1.1\r\nHost: t\r\nCookie: a=1; sid=abc\r\n\r\nbody";
        let src = HeadKey::Cookie("sid".into());
        for split in 1..raw.len() {
            let mut scan = HeadScan::default();
            let mut got = None;
            for end in [split, raw.len()] {
                if let HeadState::Complete(k) = scan.feed(&raw[..end], &src) {
                    got = Some(k.map(|r| raw[r].to_vec()));
                    break;
                }
            }
            assert_eq!(got, Some(Some(b"abc".to_vec())), "split at {split}");
        }
        // A TLS ClientHello or any non-HTTP first bytes: known on the first read, not at the
        // peek's limit or deadline.
        let mut scan = HeadScan::default();
        assert!(matches!(
            scan.feed(b"\x16\x03\x01\x02\x00\x01", &src),
            HeadState::NotHttp
        ));
        // Bare LF line ends are a head too.
        let mut scan = HeadScan::default();
        assert!(matches!(
            scan.feed(b"GET / HTTP/1.1\nCookie: sid=z\n\n", &src),
            HeadState::Complete(Some(_))
        ));
    }

    #[test]
    fn peek_key_on_a_prefix_finds_the_key_falls_back_or_fails_as_before() {
        use super::super::budget::PeekBudget;
        use super::super::testing::{client_sending, join};
        use std::time::Duration;
        lb_common::runtime::block_on(|| async {
            let budget = PeekBudget::new(1 << 20);
            let src = HeadKey::Cookie("sid".into());
            // A head split across reads: the key, and the whole head left to replay.
            let head = b"GET / HTTP/1.1\r\nCookie: a=1; sid=abc\r\n\r\n";
            let (mut s, c) =
                client_sending(vec![head[..20].to_vec(), head[20..].to_vec()], false).await;
            let mut p = Prefix::new(&budget, 4096, Duration::from_secs(5));
            let key = peek_key(&mut p, &mut s, &src).await.unwrap().unwrap();
            assert_eq!(&p.data()[key], b"abc");
            assert_eq!(p.into_bytes(), head);
            drop(s);
            join(c).await;
            // A head longer than the prefix's limit: no key, its bytes kept for the replay.
            let long = format!(
                "GET / HTTP/1.1\r\nX-Pad: {}\r\nCookie: sid=1\r\n\r\n",
                "a".repeat(3000)
            );
            let (mut s, c) = client_sending(vec![long.into_bytes()], false).await;
            let mut p = Prefix::new(&budget, 2048, Duration::from_secs(5));
            assert_eq!(peek_key(&mut p, &mut s, &src).await.unwrap(), None);
            assert_eq!(p.len(), 2048);
            drop((p, s));
            join(c).await;
            // Not HTTP: no key, at the first read.
            let (mut s, c) = client_sending(vec![b"\x16\x03\x01\x02\x00".to_vec()], false).await;
            let mut p = Prefix::new(&budget, 2048, Duration::from_secs(5));
            assert_eq!(peek_key(&mut p, &mut s, &src).await.unwrap(), None);
            assert_eq!(p.data(), b"\x16\x03\x01\x02\x00");
            drop((p, s));
            join(c).await;
            // A client that stops halfway through its head: the deadline is an error.
            let (mut s, c) = client_sending(vec![b"GET / HTTP/1.1\r\nCo".to_vec()], false).await;
            let mut p = Prefix::new(&budget, 2048, Duration::from_millis(100));
            let e = peek_key(&mut p, &mut s, &src).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
            drop(s);
            join(c).await;
        });
    }

    #[test]
    fn peek_key_reads_the_head_after_a_proxy_header_from_the_same_prefix() {
        use super::super::budget::PeekBudget;
        use super::super::golden;
        use super::super::proxy_header::{read_proxy_header, Accept};
        use super::super::testing::{client_sending, join};
        use std::time::Duration;
        lb_common::runtime::block_on(|| async {
            let budget = PeekBudget::new(1 << 20);
            let src = HeadKey::Header("Host".into());
            // nginx's header and the request in one segment, then byte by byte.
            let sent = golden::bytes(golden::NGINX_V1_TCP4);
            for chunks in [
                vec![sent.clone()],
                sent.chunks(1).map(<[u8]>::to_vec).collect(),
            ] {
                let (mut s, c) = client_sending(chunks, false).await;
                let mut p = Prefix::new(&budget, 4096, Duration::from_secs(5));
                let h = read_proxy_header(&mut p, &mut s, Accept::V1).await.unwrap();
                assert_eq!(h.source(), Some("127.0.0.1:53892".parse().unwrap()));
                let key = peek_key(&mut p, &mut s, &src).await.unwrap().unwrap();
                assert_eq!(&p.data()[key], b"golden");
                assert_eq!(
                    p.into_bytes(),
                    golden::REQUEST,
                    "the head to replay, no header"
                );
                drop(s);
                join(c).await;
            }
        });
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
