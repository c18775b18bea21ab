//! What an operator needs in production (issue 12): lame-duck shutdown, limits, access lists,
//! the access log, keepalive and lifetimes, reloads and upgrades that keep state, the seed
//! projects' interfaces.

mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_lame_duck_answers_503_at_once_keeps_serving_for_its_delay_then_stops() {
    let a = backend("a");
    let toml = format!(
        "[health]\ncheck = \"none\"\n[shutdown]\nlame_duck_ms = 1500\ngrace_ms = 2000\n[[backends]]\nname = \"a\"\naddress = \"{}\"\n",
        a.addr
    );
    let (mut lb, _cfg) = lb_with_config(&toml, &[]);
    let adm = lb.admin.unwrap();
    assert_eq!(admin_call(adm, None, "GET", "/health", "").0, 200);
    let t0 = Instant::now();
    signal(&lb.child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (code, body) = admin_call(adm, None, "GET", "/health", "");
        if code == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health still {code} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // Still accepting and serving during the lame duck.
    while t0.elapsed() < Duration::from_millis(1200) {
        assert_eq!(
            request_id(lb.addr, None, "").unwrap(),
            "a",
            "refused during the lame duck"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Then it stops accepting and exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(lb.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting after the lame duck"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "stopped early: {:?}",
        t0.elapsed()
    );
    assert!(wait_exit(&mut lb.child, Duration::from_secs(5)).is_some());
}
