//! Results as text (stdout) and JSON (`--json FILE`, documented key by key in JSON_SCHEMA.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::args::{Config, Protocol, StopAt};
use crate::keys::KeysReport;
use crate::run::RunOutput;
use crate::stats::{BucketSummary, ErrorKind};

/// The JSON document; the text output is rendered from it too, so both always agree.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Responses received, of any status.
    pub requests: u64,
    /// All failures, including responses with status >= 400.
    pub errors: u64,
    pub errors_by_kind: BTreeMap<&'static str, u64>,
    /// First message seen for each error kind that occurred.
    pub error_samples: BTreeMap<&'static str, String>,
    pub rps: f64,
    pub bytes: u64,
    pub bytes_per_sec: f64,
    pub duration_s: f64,
    /// Start of the measurement (t = 0 of the timeline), ms since the Unix epoch.
    pub started_unix_ms: f64,
    pub latency_ms: Latency,
    /// Open loop only: how late requests from idle connections left after their due time.
    pub schedule_lag_ms: Option<Lag>,
    pub servers: BTreeMap<String, u64>,
    pub server_share: BTreeMap<String, f64>,
    pub status: BTreeMap<&'static str, u64>,
    pub connections_opened: u64,
    /// With --keys: the key population and where each key's requests went.
    pub keys: Option<KeysReport>,
    pub timeline: Vec<BucketSummary>,
    pub cpu_seconds: Option<f64>,
    pub requests_per_cpu_second: Option<f64>,
    pub interrupted: bool,
    pub aborted: bool,
    pub run: RunInfo,
    pub env: Env,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct Lag {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Schedule lag (p99) above which the text output warns that the generator fell behind.
const LAG_WARN_MS: f64 = 5.0;

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub url: String,
    pub addr: String,
    pub protocol: &'static str,
    /// "closed" or "open".
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub conns: usize,
    pub new_connection: bool,
    /// `--proxy-v2`: a PROXY v2 header first on every connection.
    pub proxy_v2: bool,
    pub target_duration_s: Option<f64>,
    pub target_requests: Option<u64>,
    pub warmup_s: f64,
    pub timeout_ms: f64,
    pub request_bytes: usize,
    /// `--timeline-ms`: width of the `timeline` buckets.
    pub timeline_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Env {
    pub host: String,
    pub cores: usize,
    pub available_cores: usize,
    pub kernel: String,
    pub io_driver: String,
    pub loadgen_version: &'static str,
    pub args: Vec<String>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    pub fn new(cfg: &Config, out: &RunOutput, args: Vec<String>) -> Report {
        let t = &out.totals;
        let h = &t.hist;
        let latency = if t.requests == 0 {
            Latency {
                min: 0.0,
                mean: 0.0,
                stdev: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            }
        } else {
            Latency {
                min: ms(h.min()),
                mean: h.mean() / 1000.0,
                stdev: h.stdev() / 1000.0,
                p50: ms(h.value_at_quantile(0.5)),
                p90: ms(h.value_at_quantile(0.9)),
                p99: ms(h.value_at_quantile(0.99)),
                p999: ms(h.value_at_quantile(0.999)),
                max: ms(h.max()),
            }
        };
        let per_sec = |n: u64| {
            if out.duration_s > 0.0 {
                n as f64 / out.duration_s
            } else {
                0.0
            }
        };
        let mut drivers: Vec<&str> = out.drivers.iter().map(|d| d.name()).collect();
        drivers.dedup();
        let status_names = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        Report {
            requests: t.requests,
            errors: t.total_errors(),
            errors_by_kind: ErrorKind::ALL
                .iter()
                .map(|k| (k.name(), t.errors[*k as usize]))
                .collect(),
            error_samples: ErrorKind::ALL
                .iter()
                .filter_map(|k| t.error_samples[*k as usize].clone().map(|s| (k.name(), s)))
                .collect(),
            rps: per_sec(t.requests),
            bytes: t.bytes,
            bytes_per_sec: per_sec(t.bytes),
            duration_s: out.duration_s,
            started_unix_ms: out.started_unix_ms,
            latency_ms: latency,
            schedule_lag_ms: (cfg.rate.is_some() && !t.lag.is_empty()).then(|| Lag {
                p50: ms(t.lag.value_at_quantile(0.5)),
                p99: ms(t.lag.value_at_quantile(0.99)),
                max: ms(t.lag.max()),
            }),
            servers: t.servers.iter().cloned().collect(),
            server_share: t
                .servers
                .iter()
                .map(|(id, n)| (id.clone(), *n as f64 / t.requests.max(1) as f64))
                .collect(),
            // Interim 1xx responses are skipped while reading, so there is no 1xx class.
            status: [2, 3, 4, 5, 0]
                .iter()
                .map(|&i| (status_names[i], t.status_classes[i]))
                .collect(),
            connections_opened: t.connects,
            keys: cfg
                .keys
                .as_ref()
                .map(|space| KeysReport::new(space, cfg.source_ip_per_key, t.per_key.clone())),
            timeline: t.timeline.clone(),
            cpu_seconds: out.cpu_seconds,
            requests_per_cpu_second: out
                .cpu_seconds
                .filter(|c| *c > 0.0)
                .map(|c| t.requests as f64 / c),
            interrupted: out.interrupted,
            aborted: out.aborted,
            run: RunInfo {
                url: cfg.target.url.clone(),
                addr: cfg.addr.to_string(),
                protocol: match cfg.protocol {
                    Protocol::Http => "http",
                    Protocol::TcpEcho => "tcp_echo",
                },
                mode: if cfg.rate.is_some() { "open" } else { "closed" },
                rate: cfg.rate,
                conns: cfg.conns,
                new_connection: cfg.new_connection,
                proxy_v2: cfg.proxy_v2,
                target_duration_s: match cfg.stop {
                    StopAt::Duration(d) => Some(d.as_secs_f64()),
                    StopAt::Requests(_) => None,
                },
                target_requests: match cfg.stop {
                    StopAt::Requests(n) => Some(n),
                    StopAt::Duration(_) => None,
                },
                warmup_s: cfg.warmup.as_secs_f64(),
                timeout_ms: cfg.timeout.as_secs_f64() * 1000.0,
                request_bytes: cfg.request.len(),
                timeline_ms: t.bucket_ms,
            },
            env: Env {
                host: lb_common::sysinfo::hostname(),
                cores: cfg.cores,
                available_cores: lb_common::sysinfo::available_cores(),
                kernel: lb_common::sysinfo::kernel(),
                io_driver: if drivers.len() == 1 {
                    drivers[0].to_string()
                } else {
                    drivers.join("+")
                },
                loadgen_version: env!("CARGO_PKG_VERSION"),
                args,
            },
        }
    }

    /// The human summary printed on stdout.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let r = &self.run;
        let what = match r.target_requests {
            Some(n) => format!("{n} requests"),
            None => secs(r.target_duration_s.unwrap_or(0.0)),
        };
        let mode = match r.rate {
            Some(rate) => format!("open loop at {rate} req/s"),
            None => "closed loop".to_string(),
        };
        let conn_mode = if r.new_connection {
            "new connection per request"
        } else {
            "keep-alive"
        };
        let proxy = if r.proxy_v2 {
            ", PROXY v2 header first"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "loadgen {} ({}) for {what}: {} connections on {} core(s) [{}], {mode}, \
             {conn_mode}{proxy}",
            r.url, r.addr, r.conns, self.env.cores, self.env.io_driver
        );
        if r.warmup_s > 0.0 {
            let _ = writeln!(s, "  (after a {} warmup, not counted)", secs(r.warmup_s));
        }
        let _ = writeln!(
            s,
            "  requests    {} in {:.2}s, {} connections opened",
            self.requests, self.duration_s, self.connections_opened
        );
        let _ = writeln!(
            s,
            "  throughput  {:.1} req/s, {}/s",
            self.rps,
            human_bytes(self.bytes_per_sec)
        );
        let kinds: Vec<String> = self
            .errors_by_kind
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if kinds.is_empty() {
            let _ = writeln!(s, "  errors      0");
        } else {
            let _ = writeln!(s, "  errors      {} ({})", self.errors, kinds.join(", "));
        }
        let l = &self.latency_ms;
        if self.requests == 0 {
            let _ = writeln!(s, "  latency ms  -");
        } else {
            let _ = writeln!(
                s,
                "  latency ms  min {:.3}  mean {:.3}  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        if let Some(lag) = &self.schedule_lag_ms {
            let _ = writeln!(
                s,
                "  sched. lag  p50 {:.3}  p99 {:.3}  max {:.3} ms (idle connections' send delay, not in latency)",
                lag.p50, lag.p99, lag.max
            );
        }
        if r.protocol == "http" {
            let classes: Vec<String> = self
                .status
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if !classes.is_empty() {
                let _ = writeln!(s, "  status      {}", classes.join(", "));
            }
            let mut servers: Vec<(&String, &u64)> = self.servers.iter().collect();
            servers.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            if !servers.is_empty() {
                let list: Vec<String> = servers
                    .iter()
                    .map(|(id, n)| format!("{id} {n} ({:.1}%)", 100.0 * self.server_share[*id]))
                    .collect();
                let _ = writeln!(s, "  servers     {}", list.join(", "));
            }
        }
        if let Some(k) = &self.keys {
            let source = if k.source_ip_per_key {
                ", one source IP per key"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  keys        {} {} (seed {}){source}: {} seen, {} on one server, {} on several, \
                 stickiness {:.2}%",
                k.distinct,
                k.dist,
                k.seed,
                k.keys_seen,
                k.keys_on_one_server,
                k.keys_on_several_servers,
                k.stickiness_pct
            );
        }
        match (self.cpu_seconds, self.requests_per_cpu_second) {
            (Some(c), Some(per)) => {
                let _ = writeln!(s, "  cpu         {c:.2}s, {per:.0} requests per CPU-second");
            }
            (Some(c), None) => {
                let _ = writeln!(s, "  cpu         {c:.2}s");
            }
            _ => {}
        }
        if let Some(rate) = r.rate {
            let target = rate * self.duration_s;
            if r.target_duration_s.is_some() && (self.requests as f64) < 0.9 * target {
                let _ = writeln!(
                    s,
                    "  warning     the target rate was not reached ({:.0} of ~{target:.0} requests): \
                     add --conns or --cores, or the target is saturated",
                    self.requests
                );
            }
        }
        if let Some(lag) = self
            .schedule_lag_ms
            .as_ref()
            .filter(|l| l.p99 > LAG_WARN_MS)
        {
            let _ = writeln!(
                s,
                "  warning     requests left up to {:.1} ms (p99) after their due time: loadgen is \
                 overloaded, add --cores",
                lag.p99
            );
        }
        if self.interrupted {
            let _ = writeln!(s, "  (interrupted: partial results)");
        }
        s
    }

    /// Why nothing could be measured, for the exit-code-1 message.
    pub fn why_nothing(&self) -> String {
        if self.error_samples.is_empty() {
            return "no request was completed".to_string();
        }
        let mut kinds: Vec<(&str, u64)> = self
            .errors_by_kind
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect();
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let parts: Vec<String> = kinds
            .iter()
            .map(|(k, n)| {
                let sample = self.error_samples.get(k).map(String::as_str).unwrap_or("");
                format!("{n} x {k} ({sample})")
            })
            .collect();
        format!("no response from {}: {}", self.run.addr, parts.join(", "))
    }
}

fn secs(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.3}s")
    }
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_rates_are_readable() {
        assert_eq!(human_bytes(512.0), "512.0 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
    }

    #[test]
    fn durations_print_without_noise() {
        assert_eq!(secs(10.0), "10s");
        assert_eq!(secs(0.5), "0.500s");
    }
}
