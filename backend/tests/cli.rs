//! Command line: help lists the environment variables, bad values exit 2 naming the culprit.

mod support;

use support::*;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_shows_the_flags_and_their_environment_variables() {
    let out = run_to_exit(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--listen",
        "--id",
        "--cores",
        "--mode",
        "--body-size",
        "--max-head",
        "--header-timeout",
        "--idle-timeout",
        "env: SERVER_ID",
        "env: PORT",
        "env: HOST",
        "env: FAILURE_RATE",
        "env: MIN_LATENCY",
        "env: MAX_LATENCY",
        "/admin/health/fail",
        "SIGUSR1",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn a_bad_failure_rate_exits_2_naming_it() {
    let out = run_to_exit(&["--listen", "127.0.0.1:0"], &[("FAILURE_RATE", "1.5")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("FAILURE_RATE"),
        "{}",
        stderr_of(&out)
    );

    let out = run_to_exit(&["--listen", "127.0.0.1:0", "--failure-rate", "abc"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("FAILURE_RATE"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn min_latency_above_max_latency_exits_2_naming_both() {
    let out = run_to_exit(
        &["--listen", "127.0.0.1:0"],
        &[("MIN_LATENCY", "500"), ("MAX_LATENCY", "100")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(
        err.contains("MIN_LATENCY") && err.contains("MAX_LATENCY"),
        "{err}"
    );
}

#[test]
fn a_bad_listen_address_exits_2_and_a_taken_one_exits_1() {
    let out = run_to_exit(&["--listen", "not-an-address"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--listen"), "{}", stderr_of(&out));

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run_to_exit(&["--listen", &addr], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains(&addr), "{}", stderr_of(&out));
}
