//! `--mode echo`: raw TCP echo for L4 tests. Honours half-close: when the client shuts down its
//! write side, everything received has already been echoed; we then shut down ours and close.

use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Per-connection echo buffer.
pub const ECHO_BUF: usize = 64 * 1024;

/// Echoes until EOF, an error, or `idle` without progress on a read or a write.
pub async fn serve(mut stream: TcpStream, idle: Duration) {
    let mut buf: Vec<u8> = Vec::with_capacity(ECHO_BUF);
    loop {
        // A Vec read fills from the start and sets the length to what was read.
        let (res, b) = match monoio::time::timeout(idle, stream.read(buf)).await {
            Ok(r) => r,
            Err(_) => return,
        };
        buf = b;
        match res {
            Ok(0) => {
                // Client finished sending and has everything back: half-close, then close.
                let _ = stream.shutdown().await;
                return;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        let (res, b) = match monoio::time::timeout(idle, stream.write_all(buf)).await {
            Ok(r) => r,
            Err(_) => return,
        };
        if res.is_err() {
            return;
        }
        buf = b;
    }
}
