//! Raw TCP echo load (`--tcp-echo`): write the payload, read the same bytes back = one request.

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::outcome::{After, Detail, Failure, Outcome, Reply};
use crate::stats::ErrorKind;

/// Payloads go out in pieces of at most this much, each read back before the next is written, so
/// that a large payload cannot fill both directions' socket buffers and deadlock with the server.
const PIECE: usize = 64 * 1024;

pub struct Echo {
    payload: &'static [u8],
    /// Server slot for the "-" id (an echo carries no server id).
    server: usize,
    /// Written before the next payload, in a write of its own, and never expected back (the
    /// PROXY header of a new connection with --proxy-v2); empty otherwise.
    pub greeting: Vec<u8>,
}

impl Echo {
    pub fn new(payload: &'static [u8], server: usize) -> Self {
        Echo {
            payload,
            server,
            greeting: Vec::new(),
        }
    }

    /// Room for a whole piece: each read returns as much of the echo as has arrived.
    pub fn buffer_size(&self) -> usize {
        self.payload.len().min(PIECE)
    }

    pub async fn exchange(&mut self, stream: &mut TcpStream, mut buf: Vec<u8>) -> Outcome {
        if buf.capacity() == 0 {
            buf.reserve(self.buffer_size());
        }
        if !self.greeting.is_empty() {
            let (res, mut b) = stream.write_all(std::mem::take(&mut self.greeting)).await;
            b.clear();
            self.greeting = b;
            if let Err(e) = res {
                return (Err(Failure::io(e, false)), buf);
            }
        }
        let mut sent = 0;
        while sent < self.payload.len() {
            let piece: &'static [u8] = &self.payload[sent..(sent + PIECE).min(self.payload.len())];
            let (res, _) = stream.write_all(piece).await;
            if let Err(e) = res {
                return (Err(Failure::io(e, false)), buf);
            }
            let mut got = 0;
            while got < piece.len() {
                buf.clear();
                // Never read past this piece: the bytes of one round trip stay separate.
                let want = (piece.len() - got).min(buf.capacity());
                let (res, slice) = stream.read(buf.slice_mut(0..want)).await;
                buf = slice.into_inner();
                match res {
                    Ok(0) => {
                        let f = Failure {
                            kind: ErrorKind::ClosedEarly,
                            detail: Detail::Io(std::io::ErrorKind::UnexpectedEof.into()),
                        };
                        return (Err(f), buf);
                    }
                    Ok(n) => {
                        if buf[..n] != piece[got..got + n] {
                            let f = Failure {
                                kind: ErrorKind::BadResponse,
                                detail: Detail::EchoMismatch,
                            };
                            return (Err(f), buf);
                        }
                        got += n;
                    }
                    Err(e) => return (Err(Failure::io(e, false)), buf),
                }
            }
            sent += piece.len();
        }
        buf.clear();
        let reply = Reply {
            status: 0,
            server: self.server,
            bytes: self.payload.len() as u64,
            after: After::Reuse,
        };
        (Ok(reply), buf)
    }
}
