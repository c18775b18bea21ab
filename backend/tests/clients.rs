//! Independent clients against the real binary: Python's http.client and curl (skipped with a
//! note when curl is missing).

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const PYTHON: &str = r#"
import http.client, json, sys
host, port = sys.argv[1], int(sys.argv[2])

conn = http.client.HTTPConnection(host, port, timeout=5)
counts = []
for _ in range(3):
    conn.request("GET", "/")
    r = conn.getresponse()
    body = json.loads(r.read())
    assert r.status == 200, r.status
    assert r.getheader("X-Server-Id") == "py1", r.getheaders()
    assert body["server"] == "py1", body
    assert not r.will_close
    counts.append(body["requests"])
assert counts == sorted(counts) and len(set(counts)) == 3, counts
first_sock = conn.sock

conn.request("POST", "/admin/health/fail", body=b"")
r = conn.getresponse(); r.read()
assert r.status == 200
conn.request("GET", "/health")
r = conn.getresponse()
assert r.status == 503 and json.loads(r.read())["status"] == "unhealthy"
conn.request("POST", "/admin/health/ok", body=b"x" * 5000)
r = conn.getresponse(); r.read()
assert r.status == 200
conn.request("GET", "/health")
r = conn.getresponse()
assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
assert conn.sock is first_sock, "keep-alive connection was replaced"

# Chunked upload (http.client encodes an iterable body as chunked).
conn.request("POST", "/upload", body=iter([b"abc", b"defgh"]), encode_chunked=True)
r = conn.getresponse(); r.read()
assert r.status == 200

conn.request("GET", "/", headers={"Connection": "close"})
r = conn.getresponse(); r.read()
assert r.will_close

# HTTP/1.0
c10 = http.client.HTTPConnection(host, port, timeout=5)
c10._http_vsn, c10._http_vsn_str = 10, "HTTP/1.0"
c10.request("GET", "/")
r = c10.getresponse()
assert r.status == 200 and r.will_close
print("python ok", counts)
"#;

#[test]
fn python_http_client_works_with_keep_alive_health_toggles_and_bodies() {
    let s = start(&["--id", "py1"]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON, "127.0.0.1", &s.addr.port().to_string()]);
    let out = run_bounded(cmd, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("python ok"), "{stdout}");
}

fn curl_available() -> bool {
    match Command::new("curl").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            println!("note: curl not found, skipping the curl checks");
            false
        }
    }
}

fn curl(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    let out = run_bounded(cmd, Duration::from_secs(20));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn curl_sees_the_server_id_reuses_connections_and_toggles_health() {
    if !curl_available() {
        return;
    }
    let s = start(&["--id", "c1"]);
    let base = format!("http://{}", s.addr);

    let (code, out) = curl(&["-i", &format!("{base}/")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    assert!(out.contains("X-Server-Id: c1"), "{out}");
    assert!(out.contains(r#"{"server":"c1","requests":"#), "{out}");

    // Three URLs in one invocation: one connect, then reuse.
    let (a, b, c) = (
        format!("{base}/a"),
        format!("{base}/b"),
        format!("{base}/c"),
    );
    let (code, out) = curl(&[
        "-w",
        "%{num_connects} ",
        "-o",
        "/dev/null",
        &a,
        "-o",
        "/dev/null",
        &b,
        "-o",
        "/dev/null",
        &c,
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim(), "1 0 0", "keep-alive not reused");

    let (_, out) = curl(&["-X", "POST", &format!("{base}/admin/health/fail")]);
    assert!(out.contains(r#""healthy":false"#), "{out}");
    let (_, out) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{base}/health"),
    ]);
    assert_eq!(out, "503");
    let (_, out) = curl(&["-X", "POST", &format!("{base}/admin/health/ok")]);
    assert!(out.contains(r#""healthy":true"#), "{out}");
    let (_, out) = curl(&["-w", " %{http_code}", &format!("{base}/health")]);
    assert_eq!(out, r#"{"status":"ok"} 200"#);

    // HTTP/1.0, and an upload that asks for 100-continue.
    let (code, out) = curl(&["--http1.0", "-i", &format!("{base}/")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Connection: close"), "{out}");
    let file = std::env::temp_dir().join(format!("backend-upload-{}", std::process::id()));
    std::fs::write(&file, "z".repeat(200_000)).unwrap();
    let data = format!("@{}", file.display());
    let (code, out) = curl(&[
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        "-w",
        " %{http_code}",
        &format!("{base}/upload"),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with(" 200"), "{out}");
}
