//! Incremental decoder that skips a `Transfer-Encoding: chunked` request body (sizes,
//! extensions, data, trailers), so that chunked uploads are accepted and discarded.

/// Longest chunk-size line (digits plus extensions) we accept.
pub const MAX_SIZE_LINE: usize = 4096;
/// Longest trailer section we accept.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// Reading a chunk-size line: value so far, digits seen, in extensions, line length.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
        cr: bool,
        len: usize,
    },
    /// Skipping chunk data.
    Data(u64),
    /// Expecting the CRLF after chunk data (`true` once the CR was seen).
    DataEnd(bool),
    /// Reading trailer lines after the last chunk: length of the current line, total length.
    Trailer {
        line: usize,
        total: usize,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

impl Chunked {
    pub fn new() -> Self {
        Chunked::Size {
            value: 0,
            digits: 0,
            ext: false,
            cr: false,
            len: 0,
        }
    }

    /// Consumes as much of `input` as belongs to the body. Returns the bytes consumed; the body
    /// is complete when the state is [`Chunked::Done`].
    pub fn skip(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self {
                Chunked::Done => return Ok(i),
                Chunked::Data(left) => {
                    let n = (*left).min((input.len() - i) as u64);
                    i += n as usize;
                    *left -= n;
                    if *left == 0 {
                        *self = Chunked::DataEnd(false);
                    }
                }
                Chunked::DataEnd(cr) => {
                    let b = input[i];
                    i += 1;
                    match (b, *cr) {
                        (b'\r', false) => *cr = true,
                        (b'\n', _) => *self = Chunked::new(),
                        _ => return Err(ChunkError),
                    }
                }
                Chunked::Size {
                    value,
                    digits,
                    ext,
                    cr,
                    len,
                } => {
                    let b = input[i];
                    i += 1;
                    *len += 1;
                    if *len > MAX_SIZE_LINE {
                        return Err(ChunkError);
                    }
                    if b == b'\n' {
                        if *digits == 0 {
                            return Err(ChunkError);
                        }
                        *self = if *value == 0 {
                            Chunked::Trailer { line: 0, total: 0 }
                        } else {
                            Chunked::Data(*value)
                        };
                    } else if *cr {
                        return Err(ChunkError);
                    } else if b == b'\r' {
                        *cr = true;
                    } else if *ext {
                        // Extensions are skipped unread.
                    } else if let Some(d) = (b as char).to_digit(16) {
                        if *digits >= 15 {
                            return Err(ChunkError);
                        }
                        *digits += 1;
                        *value = *value * 16 + u64::from(d);
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        if *digits == 0 {
                            return Err(ChunkError);
                        }
                        *ext = true;
                    } else {
                        return Err(ChunkError);
                    }
                }
                Chunked::Trailer { line, total } => {
                    let b = input[i];
                    i += 1;
                    *total += 1;
                    if *total > MAX_TRAILERS {
                        return Err(ChunkError);
                    }
                    match b {
                        b'\n' if *line == 0 => *self = Chunked::Done,
                        b'\n' => *line = 0,
                        b'\r' => {}
                        _ => *line += 1,
                    }
                }
            }
        }
        Ok(i)
    }

    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(input: &[u8], step: usize) -> Result<(usize, bool), ChunkError> {
        let mut c = Chunked::new();
        let mut used = 0;
        for piece in input.chunks(step) {
            let n = c.skip(piece)?;
            used += n;
            if c.is_done() {
                return Ok((used, true));
            }
            assert_eq!(n, piece.len(), "an unfinished body consumes all input");
        }
        Ok((used, c.is_done()))
    }

    #[test]
    fn a_chunked_body_is_skipped_exactly_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\nA;name=x\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let end = body.len() - b"GET / HTTP/1.1\r\n".len();
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(skip_all(body, step), Ok((end, true)), "step {step}");
        }
    }

    #[test]
    fn trailers_are_skipped() {
        let body = b"1\r\na\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\nrest";
        assert_eq!(skip_all(body, 1), Ok((body.len() - 4, true)));
    }

    #[test]
    fn an_incomplete_body_is_not_done() {
        assert_eq!(skip_all(b"5\r\nhel", 2), Ok((6, false)));
        assert_eq!(skip_all(b"0\r\n", 1), Ok((3, false)));
    }

    #[test]
    fn garbage_sizes_and_missing_crlf_are_errors() {
        assert_eq!(skip_all(b"zz\r\n", 1), Err(ChunkError));
        assert_eq!(skip_all(b"\r\n", 1), Err(ChunkError));
        assert_eq!(skip_all(b"1\r\naXY", 1), Err(ChunkError));
        assert_eq!(skip_all(b"1\rx", 1), Err(ChunkError));
        assert_eq!(skip_all(b"ffffffffffffffffff\r\n", 1), Err(ChunkError));
        let mut long = b"1".to_vec();
        long.resize(MAX_SIZE_LINE + 10, b';');
        assert_eq!(skip_all(&long, 64), Err(ChunkError));
    }
}
