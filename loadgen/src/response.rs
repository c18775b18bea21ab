//! Incremental HTTP/1.1 response reader: head with httparse, body by Content-Length, chunked or
//! read-to-close. Pure (no I/O) so that partial reads can be tested byte by byte.

use lb_common::http::{content_length, header, is_chunked, keep_alive, MAX_HEADERS};

/// Largest response head accepted; a longer one is a bad response rather than unbounded growth.
pub const MAX_HEAD: usize = 64 * 1024;

/// Why a response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Malformed head, bad Content-Length, bad chunk framing, or a head over [`MAX_HEAD`].
    Bad,
    /// The peer closed the connection before the response was complete.
    ClosedEarly,
}

/// What is known once a head has been parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// The server said it will close (`Connection: close`, or HTTP/1.0 without keep-alive):
    /// waiting for its FIN lets it, not us, hold the TIME_WAIT state.
    pub server_closes: bool,
    /// Slot of the `X-Server-Id` value, as returned by the interning callback.
    pub server: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// Reads one response at a time; [`ResponseReader::reset`] before each request.
#[derive(Debug, Clone)]
pub struct ResponseReader {
    state: State,
    head: Option<Head>,
    /// Responses to HEAD carry no body whatever their headers say.
    head_request: bool,
}

impl ResponseReader {
    pub fn new(head_request: bool) -> Self {
        ResponseReader {
            state: State::Head,
            head: None,
            head_request,
        }
    }

    pub fn reset(&mut self) {
        self.state = State::Head;
        self.head = None;
    }

    /// The parsed head, once there is one.
    pub fn head(&self) -> Option<Head> {
        self.head
    }

    /// Consumes bytes of `data` (the unread part of the connection's buffer) and returns how many
    /// were used and whether the response is complete. Bytes after a complete response are left
    /// unconsumed. `intern` maps the `X-Server-Id` value (or `None`) to a small slot number; it is
    /// called once per response, while the head is still borrowed from `data`.
    pub fn feed(
        &mut self,
        data: &[u8],
        intern: &mut impl FnMut(Option<&[u8]>) -> usize,
    ) -> Result<(usize, bool), ParseError> {
        let mut used = 0;
        loop {
            let rest = &data[used..];
            match &mut self.state {
                State::Done => return Ok((used, true)),
                State::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut resp = httparse::Response::new(&mut headers);
                    let n = match resp.parse(rest) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => {
                            return if rest.len() > MAX_HEAD {
                                Err(ParseError::Bad)
                            } else {
                                Ok((used, false))
                            }
                        }
                        Err(_) => return Err(ParseError::Bad),
                    };
                    used += n;
                    let status = resp.code.unwrap_or(0);
                    // Interim responses (100 Continue, 103 Early Hints) precede the real one.
                    if (100..200).contains(&status) && status != 101 {
                        continue;
                    }
                    if status == 101 {
                        return Err(ParseError::Bad);
                    }
                    let version = resp.version.unwrap_or(1);
                    let no_body = self.head_request || status == 204 || status == 304;
                    let te = header(resp.headers, "transfer-encoding").is_some();
                    let (state, framed) = if no_body {
                        (State::Done, true)
                    } else if is_chunked(resp.headers) {
                        (State::Chunked(ChunkedDecoder::new()), true)
                    } else if te {
                        // A transfer coding other than chunked last: the body ends at close.
                        (State::UntilClose, false)
                    } else {
                        match content_length(resp.headers) {
                            Ok(Some(0)) => (State::Done, true),
                            Ok(Some(n)) => (State::Length(n), true),
                            Ok(None) => (State::UntilClose, false),
                            Err(_) => return Err(ParseError::Bad),
                        }
                    };
                    let alive = keep_alive(version, resp.headers);
                    self.head = Some(Head {
                        status,
                        keep_alive: alive && framed,
                        server_closes: !alive,
                        server: intern(header(resp.headers, "x-server-id")),
                    });
                    self.state = state;
                }
                State::Length(remaining) => {
                    let take = (*remaining).min(rest.len() as u64);
                    used += take as usize;
                    *remaining -= take;
                    if *remaining == 0 {
                        self.state = State::Done;
                    } else {
                        return Ok((used, false));
                    }
                }
                State::Chunked(dec) => {
                    let (n, done) = dec.feed(rest)?;
                    used += n;
                    if done {
                        self.state = State::Done;
                    } else {
                        return Ok((used, false));
                    }
                }
                State::UntilClose => return Ok((data.len(), false)),
            }
        }
    }

    /// The peer closed the connection: complete if the body was delimited by the close.
    pub fn eof(&mut self) -> Result<(), ParseError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(ParseError::ClosedEarly),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of the chunk size.
    Size,
    /// `;ext=...` after the size, skipped up to the line end.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the empty line that ends the message).
    Trailer,
    TrailerLine,
    TrailerLf,
    Done,
}

/// A small chunked-transfer decoder that only counts the body (it is never stored) and keeps just
/// enough state to resume anywhere, including in the middle of a size line or a CRLF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: Chunk,
    size: u64,
    digits: u8,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: Chunk::Size,
            size: 0,
            digits: 0,
        }
    }

    /// Consumes what it can of `data`; returns bytes used and whether the last chunk and the
    /// trailers are complete. Stops exactly at the end of the message.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), ParseError> {
        let mut i = 0;
        while i < data.len() {
            if self.state == Chunk::Data {
                // Bulk path: chunk data is skipped, not scanned.
                let take = self.size.min((data.len() - i) as u64);
                i += take as usize;
                self.size -= take;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.state = match (self.state, b) {
                (Chunk::Size, _) if b.is_ascii_hexdigit() => {
                    // 15 hex digits are 60 bits: more is not a real chunk.
                    if self.digits == 15 {
                        return Err(ParseError::Bad);
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size
                }
                (Chunk::Size, _) if self.digits == 0 => return Err(ParseError::Bad),
                (Chunk::Size, b';' | b' ' | b'\t') => Chunk::Ext,
                (Chunk::Size | Chunk::Ext, b'\r') => Chunk::SizeLf,
                (Chunk::Size | Chunk::Ext | Chunk::SizeLf, b'\n') => self.size_line_done(),
                (Chunk::Size, _) | (Chunk::SizeLf, _) => return Err(ParseError::Bad),
                (Chunk::Ext, _) => Chunk::Ext,
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataCr | Chunk::DataLf, b'\n') => Chunk::Size,
                (Chunk::DataCr | Chunk::DataLf, _) => return Err(ParseError::Bad),
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::Trailer | Chunk::TrailerLf, b'\n') => Chunk::Done,
                (Chunk::TrailerLf, _) => return Err(ParseError::Bad),
                (Chunk::TrailerLine, b'\n') => Chunk::Trailer,
                (Chunk::Trailer | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::Data | Chunk::Done, _) => unreachable!("handled above / returned below"),
            };
            if self.state == Chunk::Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == Chunk::Done))
    }

    fn size_line_done(&mut self) -> Chunk {
        // `size` now counts down the chunk's data; the digits start over for the next size line.
        self.digits = 0;
        if self.size == 0 {
            Chunk::Trailer
        } else {
            Chunk::Data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_intern() -> impl FnMut(Option<&[u8]>) -> usize {
        |_| 0
    }

    /// Feeds `raw` in pieces of `step` bytes the way the client does: unconsumed bytes stay in the
    /// buffer and new bytes are appended.
    fn read_in_steps(
        raw: &[u8],
        step: usize,
        head_request: bool,
    ) -> Result<(Head, usize), ParseError> {
        let mut r = ResponseReader::new(head_request);
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut ids = Vec::<Vec<u8>>::new();
        let mut intern = |id: Option<&[u8]>| {
            let id = id.unwrap_or(b"-").to_vec();
            match ids.iter().position(|x| *x == id) {
                Some(i) => i,
                None => {
                    ids.push(id);
                    ids.len() - 1
                }
            }
        };
        loop {
            let (used, done) = r.feed(&buf, &mut intern)?;
            buf.drain(..used);
            if done {
                return Ok((r.head().unwrap(), buf.len()));
            }
            if fed == raw.len() {
                r.eof()?;
                return Ok((r.head().unwrap(), buf.len()));
            }
            let end = (fed + step).min(raw.len());
            buf.extend_from_slice(&raw[fed..end]);
            fed = end;
        }
    }

    const FIXED: &[u8] = b"HTTP/1.1 200 OK\r\nX-Server-Id: b\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn a_content_length_response_parses_across_any_split() {
        for step in 1..=FIXED.len() {
            let (head, left) = read_in_steps(FIXED, step, false).unwrap();
            assert_eq!(head.status, 200);
            assert!(head.keep_alive);
            assert_eq!(left, 0, "step {step}");
        }
    }

    #[test]
    fn the_server_id_is_interned_once_per_response() {
        let mut seen = Vec::new();
        let mut r = ResponseReader::new(false);
        let (used, done) = r
            .feed(FIXED, &mut |id: Option<&[u8]>| {
                seen.push(id.map(|v| v.to_vec()));
                7
            })
            .unwrap();
        assert_eq!((used, done), (FIXED.len(), true));
        assert_eq!(seen, vec![Some(b"b".to_vec())]);
        assert_eq!(r.head().unwrap().server, 7);
    }

    #[test]
    fn bytes_after_a_complete_response_are_left_for_the_next_one() {
        let mut two = FIXED.to_vec();
        two.extend_from_slice(FIXED);
        let mut r = ResponseReader::new(false);
        let (used, done) = r.feed(&two, &mut no_intern()).unwrap();
        assert_eq!((used, done), (FIXED.len(), true));
    }

    #[test]
    fn close_delimited_bodies_end_at_eof_and_are_not_reusable() {
        let raw = b"HTTP/1.1 200 OK\r\n\r\nsome body until close";
        for step in [1, 3, 100] {
            let (head, _) = read_in_steps(raw, step, false).unwrap();
            assert!(!head.keep_alive);
            assert!(!head.server_closes);
        }
    }

    #[test]
    fn eof_before_the_end_of_a_body_is_closed_early() {
        let raw = &FIXED[..FIXED.len() - 2];
        assert_eq!(
            read_in_steps(raw, 4, false).unwrap_err(),
            ParseError::ClosedEarly
        );
        assert_eq!(
            read_in_steps(b"", 4, false).unwrap_err(),
            ParseError::ClosedEarly
        );
        assert_eq!(
            read_in_steps(b"HTTP/1.1 200", 4, false).unwrap_err(),
            ParseError::ClosedEarly
        );
    }

    #[test]
    fn connection_close_and_http10_end_the_connection() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        let (head, _) = read_in_steps(raw, 7, false).unwrap();
        assert!(!head.keep_alive && head.server_closes);
        let raw = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (head, _) = read_in_steps(raw, 7, false).unwrap();
        assert!(!head.keep_alive && head.server_closes);
        let raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
        assert!(read_in_steps(raw, 7, false).unwrap().0.keep_alive);
    }

    #[test]
    fn interim_100_continue_is_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 1\r\n\r\nx";
        for step in [1, 5, 200] {
            assert_eq!(read_in_steps(raw, step, false).unwrap().0.status, 503);
        }
    }

    #[test]
    fn head_204_and_304_responses_have_no_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        let (head, _) = read_in_steps(raw, 3, true).unwrap();
        assert!(head.keep_alive);
        let raw = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert!(read_in_steps(raw, 3, false).unwrap().0.keep_alive);
        let raw = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n";
        assert!(read_in_steps(raw, 3, false).unwrap().0.keep_alive);
    }

    #[test]
    fn malformed_heads_and_lengths_are_bad() {
        assert_eq!(
            read_in_steps(b"NOT HTTP\r\n\r\n", 100, false).unwrap_err(),
            ParseError::Bad
        );
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert_eq!(read_in_steps(raw, 100, false).unwrap_err(), ParseError::Bad);
        let mut huge = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
        huge.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            read_in_steps(&huge, 4096, false).unwrap_err(),
            ParseError::Bad
        );
    }

    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Server-Id: c\r\n\r\n\
        5\r\nhello\r\n1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn chunked_responses_parse_across_any_split() {
        for step in 1..=CHUNKED.len() {
            let (head, left) = read_in_steps(CHUNKED, step, false)
                .unwrap_or_else(|e| panic!("step {step}: {e:?}"));
            assert_eq!(head.status, 200);
            assert!(head.keep_alive);
            assert_eq!(left, 0);
        }
    }

    #[test]
    fn the_chunked_decoder_stops_exactly_at_the_end() {
        let body = b"3\r\nabc\r\n0\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(body), Ok((body.len() - 4, true)));
    }

    #[test]
    fn the_chunked_decoder_resumes_byte_by_byte() {
        let body = b"A\r\n0123456789\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        for (i, b) in body.iter().enumerate() {
            let (n, done) = d.feed(std::slice::from_ref(b)).unwrap();
            assert_eq!(n, 1);
            assert_eq!(done, i == body.len() - 1);
        }
    }

    #[test]
    fn bad_chunk_framing_is_rejected() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"3x\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            assert_eq!(
                ChunkedDecoder::new().feed(bad),
                Err(ParseError::Bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn eof_inside_a_chunked_body_is_closed_early() {
        let raw = &CHUNKED[..CHUNKED.len() - 3];
        assert_eq!(
            read_in_steps(raw, 10, false).unwrap_err(),
            ParseError::ClosedEarly
        );
    }
}
