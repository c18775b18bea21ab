//! lb among programs nobody here wrote: HAProxy sending PROXY v2 in front of lb, nginx taking
//! lb's PROXY v1/v2 behind it, openssl s_client and Python's ssl routed by SNI to openssl
//! s_server backends.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::*;

/// nginx on `port` expecting a PROXY header, answering every request with the client address it
/// learned from it (`$proxy_protocol_addr`).
fn nginx_proxy_protocol(dir: &TempDir, port: u16) -> Proc {
    let conf = dir.0.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "master_process off;\nworker_processes 1;\ndaemon off;\nerror_log stderr;\npid {d}/nginx.pid;\nuser root;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port} proxy_protocol;\n    location / {{ return 200 \"addr=$proxy_protocol_addr\\n\"; }}\n  }}\n}}\n",
            d = dir.0.display()
        ),
    )
    .unwrap();
    start_external(
        "nginx",
        &["-p", dir.0.to_str().unwrap(), "-c", conf.to_str().unwrap()],
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
}

/// HAProxy on `port` in TCP mode, sending `send` (e.g. "send-proxy-v2") to `server`.
fn haproxy(dir: &TempDir, port: u16, server: SocketAddr, send: &str) -> Proc {
    let conf = dir.0.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  maxconn 256\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\nfrontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  server lb {server} {send}\n"
        ),
    )
    .unwrap();
    start_external(
        "haproxy",
        &["-db", "-f", conf.to_str().unwrap()],
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
}

/// One HTTP/1.0 request to `to` from source address `from`; the body.
fn get_from(from: &str, to: SocketAddr) -> String {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&format!("{from}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: t\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or(resp)
}

#[test]
fn the_client_address_crosses_haproxy_lb_and_reaches_nginx_by_proxy_protocol() {
    if !tools_ready("proxy protocol interop", &["haproxy", "nginx"]) {
        return;
    }
    let dir = TempDir::new("lb-interop-pp");
    let nginx_port = free_port();
    let _nginx = nginx_proxy_protocol(&dir, nginx_port);
    for out in ["v1", "v2"] {
        let toml = format!(
            "[health]\ncheck = \"none\"\n[[services]]\nname = \"app\"\nsend_proxy = \"{out}\"\n[[services.backends]]\nname = \"nginx\"\naddress = \"127.0.0.1:{nginx_port}\"\n\
             [[listeners]]\nname = \"behind\"\naddress = \"127.0.0.1:0\"\nservice = \"app\"\naccept_proxy = \"v2\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\
             [[listeners]]\nname = \"direct\"\naddress = \"127.0.0.1:0\"\nservice = \"app\"\n"
        );
        let (_lb, _cfg, at) = lb_with_listeners(&toml, &["behind", "direct"], &["--cores", "1"]);
        let hp_port = free_port();
        let _hp = haproxy(&dir, hp_port, at["behind"], "send-proxy-v2");
        let hp: SocketAddr = format!("127.0.0.1:{hp_port}").parse().unwrap();
        // client 127.0.0.N -> HAProxy -> (PROXY v2) lb -> (PROXY v1/v2) nginx
        for n in [7, 42] {
            let from = format!("127.0.0.{n}");
            let body = get_from(&from, hp);
            assert_eq!(
                body.trim(),
                format!("addr={from}"),
                "{out}: through HAProxy and lb"
            );
        }
        // Without HAProxy: lb itself is the first hop and names the client it saw.
        assert_eq!(
            get_from("127.0.0.9", at["direct"]).trim(),
            "addr=127.0.0.9",
            "{out}"
        );
        // A PROXY header from a source lb does not trust: refused.
        assert_eq!(
            get_from("127.0.0.3", at["behind"]),
            "",
            "{out}: an untrusted source"
        );
    }
}

/// An openssl s_server on a free port whose certificate's CN is `cn`.
fn s_server(dir: &TempDir, cn: &str) -> Proc {
    let (key, cert) = (
        dir.0.join(format!("{cn}.key")),
        dir.0.join(format!("{cn}.pem")),
    );
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={cn}")])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let port = free_port();
    start_external(
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-www",
        ],
        format!("127.0.0.1:{port}").parse().unwrap(),
    )
}

/// The CN of the certificate a TLS client sees through `addr` with `servername`.
fn s_client_cn(addr: SocketAddr, servername: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match servername {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("subject=").map(|s| s.trim().to_string()))
        .and_then(|s| {
            s.rsplit("CN")
                .next()
                .map(|c| c.trim_start_matches([' ', '=']).to_string())
        })
        .unwrap_or_else(|| format!("no certificate: {text}"))
}

const PY_ONE_BYTE: &str = r#"
import socket, ssl, sys, time
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname=name)
s = socket.create_connection((host, port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
first = True
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    if first:
        # The ClientHello one byte per write.
        for b in data:
            s.send(bytes([b]))
            time.sleep(0.001)
        first = False
    else:
        s.sendall(data)
    got = s.recv(65536)
    if not got:
        sys.exit("closed during the handshake")
    inc.write(got)
s.sendall(out.read())
der = tls.getpeercert(binary_form=True)
print("api" if b"lbtest-api" in der else "web" if b"lbtest-web" in der else "other")
"#;

#[test]
fn tls_clients_are_routed_by_server_name_without_lb_terminating_tls() {
    if !tools_ready("SNI interop", &["openssl", "python3"]) {
        return;
    }
    let dir = TempDir::new("lb-interop-sni");
    let (api, web) = (s_server(&dir, "lbtest-api"), s_server(&dir, "lbtest-web"));
    let toml = format!(
        "[health]\ncheck = \"none\"\n[[services]]\nname = \"api\"\n[[services.backends]]\nname = \"api1\"\naddress = \"{}\"\n[[services]]\nname = \"web\"\n[[services.backends]]\nname = \"web1\"\naddress = \"{}\"\n\
         [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ndefault_service = \"web\"\n[[listeners.routes]]\nsni = \"api.example.com\"\nservice = \"api\"\n[[listeners.routes]]\nsni = \"*.api.example.com\"\nservice = \"api\"\n",
        api.addr, web.addr
    );
    let (lb, _cfg, at) = lb_with_listeners(&toml, &["tls"], &["--cores", "1"]);
    let tls = at["tls"];
    assert_eq!(s_client_cn(tls, Some("api.example.com")), "lbtest-api");
    assert_eq!(
        s_client_cn(tls, Some("v2.api.example.com")),
        "lbtest-api",
        "a wildcard route"
    );
    assert_eq!(
        s_client_cn(tls, Some("www.example.com")),
        "lbtest-web",
        "an unknown name: the default"
    );
    assert_eq!(s_client_cn(tls, None), "lbtest-web", "no SNI: the default");
    let out = Command::new("python3")
        .args([
            "-c",
            PY_ONE_BYTE,
            "127.0.0.1",
            &tls.port().to_string(),
            "api.example.com",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "api",
        "a ClientHello in 1-byte writes"
    );
    // Not TLS at all: the default service (its s_server then refuses the bytes).
    let before = web_connections(&lb);
    let _ = get_from("127.0.0.1", tls);
    assert_eq!(
        web_connections(&lb),
        before + 1,
        "a plain HTTP client goes to the default"
    );
}

fn web_connections(lb: &Proc) -> u64 {
    let (_, body) = admin_call(
        lb.admin.unwrap(),
        None,
        "GET",
        "/lb/services/web/backends",
        "",
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v[0]["connections_total"].as_u64().unwrap()
}
