//! `--mode echo`: bytes come back exactly, and half-close is honoured.

mod support;

use std::io::{Read, Write};
use std::net::Shutdown;

use support::*;

#[test]
fn echo_returns_everything_then_closes_after_the_client_half_closes() {
    let s = start(&["--mode", "echo", "--id", "e1"]);
    assert!(s.line.contains("(echo, 1 cores, "), "{}", s.line);
    let mut c = connect(s.addr);
    c.write_all(b"hello ").unwrap();
    let mut got = [0u8; 6];
    c.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello ");
    c.write_all(b"world").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"world");
}

#[test]
fn echo_moves_one_mib_byte_exact() {
    let s = start(&["--mode", "echo", "--cores", "2"]);
    let data: Vec<u8> = {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let c = connect(s.addr);
    let mut writer = c.try_clone().unwrap();
    let to_send = data.clone();
    // Write and read at the same time: neither side's buffers can hold 1 MiB.
    let sender = std::thread::spawn(move || {
        for chunk in to_send.chunks(7919) {
            writer.write_all(chunk).unwrap();
        }
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    (&c).read_to_end(&mut got).unwrap();
    sender.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
}

#[test]
fn an_idle_echo_connection_is_closed_after_the_idle_timeout() {
    let s = start(&["--mode", "echo", "--idle-timeout", "300ms"]);
    let mut c = connect(s.addr);
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).unwrap(), 0);
}
