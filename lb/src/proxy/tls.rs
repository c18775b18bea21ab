//! The server name (SNI) of a TLS ClientHello, read without terminating TLS and without a TLS
//! library: a sans-IO scan over the connection's [`Prefix`], and the peek that feeds it.
//!
//! The ClientHello is the first handshake message. It may be fragmented over several handshake
//! records (RFC 8446 5.1; clients rarely do, censorship-evasion tools do on purpose), and the
//! records split over reads anyhow. The scan walks each record as it completes, once, reads the
//! handshake header as soon as it is there, and parses the ClientHello once it is whole, so that
//! its work is linear in the bytes however they arrive. Every length field is checked against
//! what holds it before it is used; anything past [`MAX_HELLO`] is refused.

use std::borrow::Cow;
use std::io;

use monoio::net::TcpStream;

use super::prefix::Prefix;

/// The most bytes of records (their 5-byte headers included) read for one ClientHello. Browsers'
/// ClientHellos are 0.5-2 KiB (a post-quantum key share included); 16 KiB leaves room for many
/// session tickets while keeping what an untrusted client makes lb hold small.
pub const MAX_HELLO: usize = 16 * 1024;
/// TLS plaintext records carry at most 2^14 bytes (RFC 8446 5.1).
const MAX_RECORD: usize = 1 << 14;

const TOO_MANY: &str = "a ClientHello in more than 16 KiB of records";

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: usize = 0;
const HOST_NAME: usize = 0;

/// What the bytes so far say about the client's server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// The first bytes are not a TLS handshake record (a plain HTTP client, say): known from the
    /// first byte or two.
    NotTls,
    /// A ClientHello so far: read more.
    Incomplete,
    /// The ClientHello ended: its host name (lower-cased, a valid DNS name, no trailing dot), or
    /// None without a server_name extension.
    Complete(Option<String>),
    /// TLS, but no more bytes can make it a ClientHello lb routes (the reason is for logs).
    Invalid(&'static str),
}

/// The server name of the ClientHello at the start of `buf` (which may hold more after it).
pub fn client_hello_sni(buf: &[u8]) -> Sni {
    SniScan::default().feed(buf)
}

/// Follows a ClientHello as it arrives: feed it everything read so far, each time more arrives.
#[derive(Debug, Default)]
pub struct SniScan {
    /// Where the first record not walked yet starts.
    next: usize,
    /// Handshake bytes in the records walked.
    handshake: usize,
    /// The ClientHello's length, its 4-byte handshake header included, once that is known.
    hello: Option<usize>,
    /// Bytes walked or parsed over all feeds (tested to stay linear in the input).
    examined: usize,
}

impl SniScan {
    /// The state of the ClientHello in `buf`, which holds everything read so far (the same
    /// bytes as the last feed and maybe more). More bytes never change an answer other than
    /// `Incomplete`, which holds less than [`MAX_HELLO`] bytes.
    pub fn feed(&mut self, buf: &[u8]) -> Sni {
        match buf {
            [] => return Sni::Incomplete,
            [first, ..] if *first != HANDSHAKE => return Sni::NotTls,
            // SSL 3.0 and every TLS version say 3 first.
            [_, major, ..] if *major != 3 => return Sni::NotTls,
            _ => {}
        }
        loop {
            // Checked before the state moves on, so that feeding again answers the same.
            if self.hello.is_none() && self.handshake >= 4 {
                self.examined += 4;
                let head = gather(buf, 4);
                if head[0] != CLIENT_HELLO {
                    return Sni::Invalid("a first handshake message other than a ClientHello");
                }
                let hello = 4
                    + (usize::from(head[1]) << 16 | usize::from(head[2]) << 8)
                    + usize::from(head[3]);
                // At least one record header comes with it.
                if 5 + hello > MAX_HELLO {
                    return Sni::Invalid("a ClientHello longer than 16 KiB");
                }
                self.hello = Some(hello);
            }
            if let Some(hello) = self.hello {
                if self.handshake >= hello {
                    self.examined += hello;
                    return match parse_client_hello(&gather(buf, hello)[4..]) {
                        Ok(name) => Sni::Complete(name),
                        Err(reason) => Sni::Invalid(reason),
                    };
                }
            }
            // Room for one more record (a header and a byte) under the limit?
            if self.next + 6 > MAX_HELLO {
                return Sni::Invalid(TOO_MANY);
            }
            let Some(header) = buf.get(self.next..self.next + 5) else {
                return Sni::Incomplete;
            };
            if header[0] != HANDSHAKE {
                return Sni::Invalid(
                    "a record other than a handshake before the ClientHello ended",
                );
            }
            if header[1] != 3 {
                return Sni::Invalid("a record of a version other than TLS in a ClientHello");
            }
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if len == 0 {
                return Sni::Invalid("an empty handshake record");
            }
            if len > MAX_RECORD {
                return Sni::Invalid("a record longer than 16 KiB");
            }
            let end = self.next + 5 + len;
            if end > MAX_HELLO {
                return Sni::Invalid(TOO_MANY);
            }
            if buf.len() < end {
                return Sni::Incomplete;
            }
            self.next = end;
            self.handshake += len;
            self.examined += 5;
        }
    }
}

/// The first `n` handshake bytes of the whole records at the start of `buf` (which hold at least
/// `n`): in place when the first record holds them, as it nearly always does; copied out of the
/// records otherwise, at most [`MAX_HELLO`] bytes.
fn gather(buf: &[u8], n: usize) -> Cow<'_, [u8]> {
    let first = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if first >= n {
        return Cow::Borrowed(&buf[5..5 + n]);
    }
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    while out.len() < n {
        let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
        let take = len.min(n - out.len());
        out.extend_from_slice(&buf[at + 5..at + 5 + take]);
        at += 5 + len;
    }
    Cow::Owned(out)
}

/// Reads a ClientHello's fields in order, each bounded by the bytes left.
struct Reader<'a>(&'a [u8]);

const SHORT: &str = "a ClientHello field longer than what holds it";

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err(SHORT);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    /// The next `len`-prefixed block (`len` read as a u8 or a u16), as a reader of its own.
    fn block(&mut self, len: usize) -> Result<Reader<'a>, &'static str> {
        self.take(len).map(Reader)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The host name in a ClientHello's body (RFC 8446 4.1.2, RFC 6066 3).
fn parse_client_hello(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.u8()?;
    if session_id > 32 {
        return Err("a ClientHello session id longer than 32 bytes");
    }
    r.take(session_id)?;
    let suites = r.u16()?;
    if suites < 2 || suites % 2 != 0 {
        return Err("a ClientHello without a whole list of cipher suites");
    }
    r.take(suites)?;
    let compression = r.u8()?;
    if compression == 0 {
        return Err("a ClientHello without compression methods");
    }
    r.take(compression)?;
    // Extensions may be absent altogether before TLS 1.3.
    if r.is_empty() {
        return Ok(None);
    }
    let len = r.u16()?;
    let mut extensions = r.block(len)?;
    if !r.is_empty() {
        return Err("bytes after a ClientHello's extensions");
    }
    let mut name = None;
    let mut seen = false;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        let mut data = extensions.block(len)?;
        if kind != SERVER_NAME {
            continue;
        }
        // Two would let lb route on one name and the backend serve the other.
        if seen {
            return Err("two server_name extensions");
        }
        seen = true;
        let len = data.u16()?;
        let mut list = data.block(len)?;
        if !data.is_empty() || list.is_empty() {
            return Err("a server_name extension that is not one list of names");
        }
        while !list.is_empty() {
            let kind = list.u8()?;
            let len = list.u16()?;
            let host = list.take(len)?;
            if kind == HOST_NAME {
                if name.is_some() {
                    return Err("two host names in a server_name extension");
                }
                name = Some(dns_name(host)?);
            }
        }
    }
    Ok(name)
}

/// `raw` as a lower-cased DNS host name: labels of letters, digits and inner hyphens, 1-63
/// bytes each, 253 in all; one trailing dot is dropped (RFC 6066 says to send none). Anything
/// else is refused: the name reaches routing, logs and metrics.
fn dns_name(raw: &[u8]) -> Result<String, &'static str> {
    const NOT_DNS: &str = "a server name that is not a DNS host name";
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.is_empty() || name.len() > 253 {
        return Err(NOT_DNS);
    }
    for label in name.split(|&b| b == b'.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
            && label[0] != b'-'
            && label[label.len() - 1] != b'-';
        if !ok {
            return Err(NOT_DNS);
        }
    }
    Ok(String::from_utf8(name.to_ascii_lowercase()).expect("checked ASCII"))
}

/// Reads from `stream` into `prefix` until it holds a whole ClientHello, or shows it is not TLS:
/// the host name, or None for a client that is not TLS or sent no server name. Nothing is
/// consumed: the prefix is replayed whole to the backend, which terminates the TLS.
///
/// Fails with `InvalidData` on a malformed or too large ClientHello or a server name that is
/// not a DNS name, with `UnexpectedEof` if the client closes first, and with the prefix's errors
/// ([`super::prefix::PrefixError`]): the deadline, the core's budget, or a prefix limit below
/// the ClientHello's records (give the prefix at least [`MAX_HELLO`] bytes).
pub async fn peek_sni(
    prefix: &mut Prefix<'_>,
    stream: &mut TcpStream,
) -> io::Result<Option<String>> {
    let mut scan = SniScan::default();
    loop {
        match scan.feed(prefix.data()) {
            Sni::NotTls => return Ok(None),
            Sni::Complete(name) => return Ok(name),
            Sni::Invalid(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
            Sni::Incomplete => {}
        }
        if prefix.fill(stream).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed before its ClientHello ended",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::budget::PeekBudget;
    use super::super::golden;
    use super::super::testing::{client_sending, join, Rng};
    use super::*;

    fn goldens() -> Vec<(&'static str, Vec<u8>, Option<&'static str>)> {
        vec![
            (
                "openssl",
                golden::bytes(golden::OPENSSL_SNI),
                Some("x.example.com"),
            ),
            (
                "openssl -noservername",
                golden::bytes(golden::OPENSSL_NO_SNI),
                None,
            ),
            (
                "openssl -tls1_2",
                golden::bytes(golden::OPENSSL_TLS12_MIXED_CASE),
                Some("mixed.example.com"),
            ),
            (
                "python",
                golden::bytes(golden::PYTHON_SNI),
                Some("py.example.com"),
            ),
            (
                "python, no name",
                golden::bytes(golden::PYTHON_NO_SNI),
                None,
            ),
        ]
    }

    fn complete(name: Option<&str>) -> Sni {
        Sni::Complete(name.map(str::to_string))
    }

    /// Every prefix of `buf`, parsed alone, is `Incomplete` or what `buf` parses as; and a scan
    /// fed the prefixes one after another (byte by byte) says the same, also when fed again
    /// after it answered. Returns the answer.
    fn same_at_every_split(buf: &[u8]) -> Sni {
        let whole = client_hello_sni(buf);
        let mut scan = SniScan::default();
        let mut decided = false;
        for end in 0..=buf.len() {
            let alone = client_hello_sni(&buf[..end]);
            let fed = scan.feed(&buf[..end]);
            assert_eq!(alone, fed, "prefix of {end} bytes, alone and fed");
            if decided || alone != Sni::Incomplete {
                assert_eq!(alone, whole, "prefix of {end} bytes of {buf:02x?}");
                decided = true;
            } else {
                assert!(end < MAX_HELLO);
            }
        }
        whole
    }

    /// The same ClientHello in records of the sizes `size` picks (its handshake bytes cut anew).
    fn refragment(records: &[u8], mut size: impl FnMut() -> usize) -> Vec<u8> {
        let mut payload = Vec::new();
        let mut at = 0;
        while at + 5 <= records.len() {
            let len = usize::from(u16::from_be_bytes([records[at + 3], records[at + 4]]));
            payload.extend_from_slice(&records[at + 5..at + 5 + len]);
            at += 5 + len;
        }
        let mut out = Vec::new();
        for chunk in split_sizes(&payload, &mut size) {
            out.extend_from_slice(&[HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn split_sizes<'a>(b: &'a [u8], size: &mut impl FnMut() -> usize) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = b;
        while !rest.is_empty() {
            let n = size().clamp(1, rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }

    /// A minimal ClientHello record with these extensions.
    fn hello_with(extensions: &[(usize, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend_from_slice(&(*kind as u16).to_be_bytes());
            ext.extend_from_slice(&(data.len() as u16).to_be_bytes());
            ext.extend_from_slice(data);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![CLIENT_HELLO, 0];
        hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
        hs.extend_from_slice(&body);
        let mut out = vec![HANDSHAKE, 3, 1];
        out.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        out.extend_from_slice(&hs);
        out
    }

    /// A server_name extension listing these (name type, name) entries.
    fn server_name(entries: &[(u8, &[u8])]) -> (usize, Vec<u8>) {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&(name.len() as u16).to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        (SERVER_NAME, data)
    }

    #[test]
    fn openssl_and_python_client_hellos_give_their_server_names() {
        for (who, hello, name) in goldens() {
            assert_eq!(same_at_every_split(&hello), complete(name), "{who}");
        }
    }

    #[test]
    fn a_client_hello_in_one_byte_records_or_any_records_gives_the_same_name() {
        let mut rng = Rng(0x853c_49e6_748f_ea9b);
        for (who, hello, name) in goldens() {
            let ones = refragment(&hello, || 1);
            assert!(ones.len() > 5 * hello.len(), "{who}: one record per byte");
            assert_eq!(
                same_at_every_split(&ones),
                complete(name),
                "{who} in 1-byte records"
            );
            for _ in 0..20 {
                let max = 1 + rng.below(300);
                let mixed = refragment(&hello, || 1 + rng.below(max));
                assert_eq!(client_hello_sni(&mixed), complete(name), "{who}");
                // The records split across reads at random points too.
                let mut scan = SniScan::default();
                let mut end = 0;
                let got = loop {
                    end = (end + 1 + rng.below(40)).min(mixed.len());
                    match scan.feed(&mixed[..end]) {
                        Sni::Incomplete => assert!(end < mixed.len()),
                        other => break other,
                    }
                };
                assert_eq!(got, complete(name), "{who}");
            }
        }
    }

    #[test]
    fn a_plain_http_client_is_told_from_its_first_byte() {
        assert_eq!(client_hello_sni(b"G"), Sni::NotTls);
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Sni::NotTls);
        assert_eq!(client_hello_sni(b"PROXY TCP4"), Sni::NotTls);
        assert_eq!(client_hello_sni(b""), Sni::Incomplete);
        assert_eq!(client_hello_sni(b"\x16"), Sni::Incomplete);
        assert_eq!(client_hello_sni(b"\x16\x01"), Sni::NotTls);
        // An SSL 2.0-style hello has no server name extension: not TLS to route on.
        assert_eq!(client_hello_sni(b"\x80\x2e\x01\x03\x01"), Sni::NotTls);
    }

    #[test]
    fn what_follows_the_client_hello_is_not_read() {
        // TLS 1.3 early data: a change_cipher_spec record and application data right after.
        for (who, mut hello, name) in goldens() {
            hello.extend_from_slice(&[0x14, 3, 3, 0, 1, 1, 0x17, 3, 3, 0, 3, 1, 2, 3]);
            assert_eq!(client_hello_sni(&hello), complete(name), "{who}");
        }
    }

    #[test]
    fn names_that_are_not_dns_host_names_are_refused_and_good_ones_lower_cased() {
        let sni = |n: &[u8]| client_hello_sni(&hello_with(&[server_name(&[(0, n)])]));
        assert_eq!(sni(b"API.Example.COM"), complete(Some("api.example.com")));
        assert_eq!(
            sni(b"xn--bcher-kva.example."),
            complete(Some("xn--bcher-kva.example"))
        );
        assert_eq!(sni(b"a-b.c1"), complete(Some("a-b.c1")));
        let long_label = [b'a'; 64];
        let long_name = [
            &[b'a'; 63][..],
            b".",
            &[b'b'; 63],
            b".",
            &[b'c'; 63],
            b".",
            &[b'd'; 62],
        ]
        .concat();
        assert_eq!(long_name.len(), 254);
        for bad in [
            &b"under_score.example"[..],
            b"sp ace.example",
            b"a..b",
            b".a",
            b"..",
            b"",
            b"-a.example",
            b"a-.example",
            b"caf\xc3\xa9.example",
            b"a\x00b",
            b"a/b",
            &long_label,
            &long_name,
        ] {
            assert!(
                matches!(sni(bad), Sni::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            sni(&long_name[..253]),
            complete(Some(std::str::from_utf8(&long_name[..253]).unwrap()))
        );
    }

    #[test]
    fn ambiguous_or_malformed_server_name_extensions_are_refused() {
        let ok = server_name(&[(0, b"a.example")]);
        // Another name type beside the host name is skipped; no extension at all is no name.
        assert_eq!(
            client_hello_sni(&hello_with(&[server_name(&[(7, b"x"), (0, b"a.example")])])),
            complete(Some("a.example"))
        );
        assert_eq!(
            client_hello_sni(&hello_with(&[(10, vec![0, 2, 0, 29])])),
            complete(None)
        );
        let bad = [
            hello_with(&[ok.clone(), ok.clone()]),
            hello_with(&[server_name(&[(0, b"a.example"), (0, b"b.example")])]),
            hello_with(&[(SERVER_NAME, vec![])]),
            hello_with(&[(SERVER_NAME, vec![0, 0])]),
            hello_with(&[(SERVER_NAME, vec![0, 9, 0, 0, 1, b'a'])]),
            hello_with(&[(SERVER_NAME, vec![0, 4, 0, 0, 1, b'a', 0])]),
        ];
        for hello in &bad {
            assert!(
                matches!(same_at_every_split(hello), Sni::Invalid(_)),
                "{hello:02x?}"
            );
        }
    }

    #[test]
    fn records_and_lengths_are_bounded_before_they_are_read() {
        let hello = golden::bytes(golden::OPENSSL_SNI);
        let header = |kind: u8, len: usize| {
            let mut h = vec![kind, 3, 1];
            h.extend_from_slice(&(len as u16).to_be_bytes());
            h
        };
        // A record longer than TLS allows, or than the limit: refused from its header.
        assert!(matches!(
            client_hello_sni(&header(HANDSHAKE, MAX_RECORD + 1)),
            Sni::Invalid(_)
        ));
        assert!(matches!(
            client_hello_sni(&header(HANDSHAKE, 0)),
            Sni::Invalid(_)
        ));
        // A ClientHello announcing more than 16 KiB: refused from its handshake header.
        let mut big = header(HANDSHAKE, 4);
        big.extend_from_slice(&[CLIENT_HELLO, 0, 0x40, 0]);
        assert!(matches!(client_hello_sni(&big), Sni::Invalid(_)));
        // Another record type inside the ClientHello, or another first message.
        let mut two = refragment(&hello, || 100);
        two[105] = 0x17;
        assert!(matches!(client_hello_sni(&two), Sni::Invalid(_)));
        let mut not_hello = hello.clone();
        not_hello[5] = 2;
        assert!(matches!(client_hello_sni(&not_hello), Sni::Invalid(_)));
        // Tiny records past 16 KiB of records: refused when the limit is crossed.
        let padded = hello_with(&[(21, vec![0; 3000])]);
        let ones = refragment(&padded, || 1);
        assert!(ones.len() > MAX_HELLO);
        assert!(matches!(same_at_every_split(&ones), Sni::Invalid(_)));
    }

    #[test]
    fn the_scan_is_linear_in_a_client_hello_fed_byte_by_byte() {
        let ones = refragment(&golden::bytes(golden::PYTHON_SNI), || 1);
        let mut scan = SniScan::default();
        let mut got = Sni::Incomplete;
        for end in 1..=ones.len() {
            got = scan.feed(&ones[..end]);
            if got != Sni::Incomplete {
                break;
            }
        }
        assert_eq!(got, complete(Some("py.example.com")));
        assert!(
            scan.examined <= 2 * ones.len(),
            "{} bytes examined for {} bytes of records",
            scan.examined,
            ones.len()
        );
    }

    #[test]
    fn random_and_mutated_bytes_never_panic_and_answers_never_change_with_more_bytes() {
        let seeds: Vec<Vec<u8>> = goldens().into_iter().map(|(_, h, _)| h).collect();
        let mut rng = Rng(0xda94_2042_e4dd_58b5);
        for i in 0..3_000 {
            let buf = match i % 3 {
                0 => {
                    let len = rng.below(400);
                    let mut b = rng.bytes(len);
                    if b.len() >= 2 {
                        b[0] = HANDSHAKE;
                        b[1] = 3;
                    }
                    b
                }
                _ => {
                    let seed = &seeds[rng.below(seeds.len())];
                    let mut b = if i % 3 == 1 {
                        seed.clone()
                    } else {
                        let max = 1 + rng.below(64);
                        refragment(seed, || 1 + rng.below(max))
                    };
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(b.len());
                        b[at] = match rng.below(3) {
                            0 => rng.next() as u8,
                            1 => 0,
                            _ => b[at].wrapping_add(1),
                        };
                    }
                    if rng.below(4) == 0 {
                        b.truncate(rng.below(b.len() + 1));
                    }
                    b
                }
            };
            if let Sni::Complete(Some(name)) = same_at_every_split(&buf) {
                assert!(
                    dns_name(name.as_bytes()).is_ok_and(|n| n == name),
                    "{name:?}"
                );
            }
        }
    }

    #[test]
    fn peek_sni_after_a_proxy_header_leaves_the_client_hello_to_replay() {
        use super::super::proxy_header::{encode_v2, read_proxy_header, Accept};
        lb_common::runtime::block_on(|| async {
            let budget = PeekBudget::new(1 << 20);
            let hello = refragment(&golden::bytes(golden::OPENSSL_SNI), || 50);
            let header = encode_v2(
                "10.1.2.3:5555".parse().unwrap(),
                "10.0.0.1:443".parse().unwrap(),
            );
            let mut sent = header.clone();
            sent.extend_from_slice(&hello);
            // The header and the first records in one read; the rest split mid-record.
            let chunks = vec![
                sent[..header.len() + 60].to_vec(),
                sent[header.len() + 60..].to_vec(),
            ];
            let (mut s, c) = client_sending(chunks, false).await;
            let mut p = Prefix::new(&budget, MAX_HELLO, std::time::Duration::from_secs(5));
            let h = read_proxy_header(&mut p, &mut s, Accept::V2).await.unwrap();
            assert_eq!(h.source(), Some("10.1.2.3:5555".parse().unwrap()));
            let name = peek_sni(&mut p, &mut s).await.unwrap();
            assert_eq!(name.as_deref(), Some("x.example.com"));
            assert_eq!(
                p.into_bytes(),
                hello,
                "the ClientHello, without the PROXY header"
            );
            drop(s);
            join(c).await;

            // A plain HTTP client: no name, at its first read, its bytes kept.
            let (mut s, c) = client_sending(vec![b"GET / HTTP/1.1\r\n".to_vec()], false).await;
            let mut p = Prefix::new(&budget, MAX_HELLO, std::time::Duration::from_secs(5));
            assert_eq!(peek_sni(&mut p, &mut s).await.unwrap(), None);
            assert!(p.data().starts_with(b"G"));
            drop(s);
            join(c).await;

            // A malformed ClientHello is an error, not a fallback.
            let mut bad = golden::bytes(golden::OPENSSL_SNI);
            bad[5] = 2;
            let (mut s, c) = client_sending(vec![bad], false).await;
            let mut p = Prefix::new(&budget, MAX_HELLO, std::time::Duration::from_secs(5));
            let e = peek_sni(&mut p, &mut s).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            drop(s);
            join(c).await;
        });
    }
}
