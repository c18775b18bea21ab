//! The `lb` command line: config validation and its error messages.

use std::process::Command;

fn lb(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lb"));
    cmd.args(args);
    for v in ["ALGORITHM", "BACKEND_SERVERS", "HOST", "PORT"] {
        cmd.env_remove(v);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_accepts_the_example_files() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (code, out, err) = lb(&["--check-config", "--config", path.to_str().unwrap()], &[]);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            assert!(out.contains("configuration OK"), "{out}");
        }
    }
}

#[test]
fn check_config_rejects_an_unknown_algorithm_naming_the_key() {
    let (code, _, err) = lb(
        &["--check-config", "-b", "127.0.0.1:9001", "-a", "fastest"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("algorithm") && err.contains("round_robin"),
        "{err}"
    );
}

#[test]
fn environment_variables_configure_and_flags_override_them() {
    let (code, out, err) = lb(
        &["--check-config"],
        &[
            ("BACKEND_SERVERS", "127.0.0.1:9001,127.0.0.1:9002"),
            ("ALGORITHM", "random"),
            ("PORT", "9090"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("127.0.0.1:9090") && out.contains("random") && out.contains("2 backend"),
        "{out}"
    );
    let (_, out, _) = lb(
        &["--check-config", "-a", "maglev"],
        &[
            ("BACKEND_SERVERS", "127.0.0.1:9001"),
            ("ALGORITHM", "random"),
        ],
    );
    assert!(out.contains("maglev"), "{out}");
}

#[test]
fn a_missing_config_file_is_named() {
    let (code, _, err) = lb(&["--check-config", "--config", "/nonexistent/lb.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/lb.toml"), "{err}");
}

#[test]
fn cores_default_to_the_cpus_lb_may_use_and_take_auto_or_a_number() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let (code, out, _) = lb(&["--check-config", "-b", "127.0.0.1:9001"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{cpus} core(s)")), "{out}");
    let (code, out, _) = lb(
        &["--check-config", "-b", "127.0.0.1:9001", "--cores", "3"],
        &[],
    );
    assert_eq!(code, 0);
    assert!(out.contains("3 core(s)"), "{out}");
    let (code, _, err) = lb(
        &["--check-config", "-b", "127.0.0.1:9001", "--cores", "many"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(err.contains("cores") && err.contains("auto"), "{err}");
}
