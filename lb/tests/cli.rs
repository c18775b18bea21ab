//! The `lb` command line: config validation, its error messages, and the help text.

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

/// The environment variables lb's code reads, found in its source so that a new one cannot be
/// left out of `lb --help`: every `var_os("NAME")` and `env::var("NAME")` outside the test
/// modules of lb/src and common/src, the seed variables that `Overrides::from_env` reads through
/// `get("NAME")`, and the two that libraries read for lb: RUST_LOG (tracing's EnvFilter) and
/// TMPDIR (`std::env::temp_dir`, the upgrade socket's directory).
fn environment_variables_lb_reads() -> std::collections::BTreeSet<String> {
    fn rs_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rs_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    fn quoted_after(text: &str, prefix: &str, out: &mut std::collections::BTreeSet<String>) {
        for (i, _) in text.match_indices(prefix) {
            let rest = &text[i + prefix.len()..];
            out.insert(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    rs_files(&root.join("../common/src"), &mut files);
    let mut names: std::collections::BTreeSet<String> =
        ["RUST_LOG", "TMPDIR"].map(String::from).into();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        quoted_after(code, "var_os(\"", &mut names);
        quoted_after(code, "env::var(\"", &mut names);
        if path.ends_with("config/env.rs") {
            quoted_after(code, "get(\"", &mut names);
        }
    }
    names
}

/// The signals lb handles: the list its signal thread waits for in lb/src/serve.rs.
fn signals_lb_handles() -> Vec<String> {
    let serve =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/serve.rs")).unwrap();
    let line = serve
        .lines()
        .find(|l| l.contains("let signals = ["))
        .expect("serve.rs lists its signals in `let signals = [...]`");
    line.split("libc::")
        .skip(1)
        .map(|s| {
            s.split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn long_help_names_every_environment_variable_signal_and_default() {
    let (code, help, err) = lb(&["--help"], &[]);
    assert_eq!(code, 0, "{err}");
    let vars = environment_variables_lb_reads();
    for known in [
        "BACKEND_SERVERS",
        "LB_ADMIN_TOKEN",
        "MONOIO_FORCE_LEGACY_DRIVER",
    ] {
        assert!(
            vars.contains(known),
            "the source scan missed {known}: {vars:?}"
        );
    }
    for var in &vars {
        assert!(
            help.contains(var.as_str()),
            "lb --help does not name {var}:\n{help}"
        );
    }
    let signals = signals_lb_handles();
    assert!(signals.iter().any(|s| s == "SIGTERM"), "{signals:?}");
    for sig in &signals {
        assert!(
            help.contains(sig.as_str()),
            "lb --help does not name {sig}:\n{help}"
        );
    }
    for default in [
        "127.0.0.1:8080",
        "127.0.0.1:9900",
        "\"auto\"",
        "round_robin",
        "127.0.0.1:9001-9003",
        "lame_duck_ms",
        "config/lb.toml",
    ] {
        assert!(help.contains(default), "lb --help lacks {default}:\n{help}");
    }
}

#[test]
fn short_help_stays_short_and_points_to_the_long_one() {
    let (code, help, _) = lb(&["-h"], &[]);
    assert_eq!(code, 0);
    assert!(help.contains("lb --help"), "{help}");
    assert!(
        !help.contains("SIGTERM") && help.lines().count() < 25,
        "{help}"
    );
}
