//! Per-core results (counters, latency histograms, server counts, timeline buckets of
//! `--timeline-ms`), recorded without locks by the core's own tasks and merged by the main thread
//! after the run.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::keys::{merge_tally, KeyTally, MergedTally};

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
const LATENCY_SIGFIG: u8 = 3;
/// Timeline bucket histograms only feed the timeline's percentiles: 2 digits and u32 counts keep
/// each one around 13 KiB (allocated only for buckets that got a response).
const BUCKET_SIGFIG: u8 = 2;

/// Every way a request can fail. `Status4xx`/`Status5xx` are completed responses that also count
/// as errors; all others mean no (usable) response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ConnectRefused,
    ConnectOther,
    Reset,
    Timeout,
    BadResponse,
    ClosedEarly,
    IoOther,
    Status4xx,
    Status5xx,
}

impl ErrorKind {
    pub const COUNT: usize = 9;
    pub const ALL: [ErrorKind; Self::COUNT] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectOther,
        ErrorKind::Reset,
        ErrorKind::Timeout,
        ErrorKind::BadResponse,
        ErrorKind::ClosedEarly,
        ErrorKind::IoOther,
        ErrorKind::Status4xx,
        ErrorKind::Status5xx,
    ];

    /// The key used in `errors_by_kind` and in the text output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectOther => "connect_other",
            ErrorKind::Reset => "reset",
            ErrorKind::Timeout => "timeout",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::ClosedEarly => "closed_early",
            ErrorKind::IoOther => "io_other",
            ErrorKind::Status4xx => "4xx",
            ErrorKind::Status5xx => "5xx",
        }
    }

    /// Classifies an I/O error; `connecting` separates connect failures from failures on an
    /// established connection.
    pub fn from_io(e: &io::Error, connecting: bool) -> ErrorKind {
        use io::ErrorKind as K;
        match (connecting, e.kind()) {
            (_, K::TimedOut) => ErrorKind::Timeout,
            (true, K::ConnectionRefused) => ErrorKind::ConnectRefused,
            (true, _) => ErrorKind::ConnectOther,
            (false, K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted) => ErrorKind::Reset,
            (false, K::UnexpectedEof) => ErrorKind::ClosedEarly,
            (false, _) => ErrorKind::IoOther,
        }
    }

    /// The error kind a response status adds, if any.
    pub fn from_status(status: u16) -> Option<ErrorKind> {
        match status {
            400..=499 => Some(ErrorKind::Status4xx),
            500..=599 => Some(ErrorKind::Status5xx),
            _ => None,
        }
    }
}

/// Live counters of one core for the progress line. One writer (the core) stores its running
/// totals with plain relaxed stores; the main thread reads them once a second. Aligned to a cache
/// line so that cores do not share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Progress {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// One bucket (`--timeline-ms` wide) of the timeline.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub requests: u64,
    pub errors: [u64; ErrorKind::COUNT],
    /// Allocated on the bucket's first response.
    pub hist: Option<Histogram<u32>>,
    /// Responses per server slot (index into [`CoreStats::servers`]); as long as the highest
    /// slot seen in this bucket.
    pub servers: Vec<u64>,
}

/// Everything one core measured. Owned by the core (behind an `Rc<RefCell>` shared by its
/// connection tasks, borrowed only between awaits).
#[derive(Debug)]
pub struct CoreStats {
    measure_start: Instant,
    progress: Arc<Progress>,
    pub requests: u64,
    pub errors: [u64; ErrorKind::COUNT],
    /// The first message seen for each error kind, to say *why* when nothing worked.
    pub error_samples: [Option<String>; ErrorKind::COUNT],
    /// Response bytes read (head and body; echo: bytes echoed back).
    pub bytes: u64,
    /// Responses by status class: index 1..=5 for 1xx..5xx, 0 for anything else.
    pub status_classes: [u64; 6],
    pub hist: Histogram<u64>,
    /// Open loop: how late requests on idle connections were sent after their due time (µs).
    pub lag: Histogram<u64>,
    /// `X-Server-Id` value -> responses. Few distinct ids, so a linear search beats hashing.
    pub servers: Vec<(Vec<u8>, u64)>,
    /// Width of a timeline bucket in microseconds (`--timeline-ms`).
    bucket_us: u64,
    pub buckets: Vec<Bucket>,
    /// With --keys: responses per key and server slot.
    pub keys: KeyTally,
    pub connects: u64,
    /// Time of the last counted response or error.
    pub last_event: Option<Instant>,
}

/// Label for responses without an `X-Server-Id` header.
pub const NO_SERVER_ID: &[u8] = b"-";

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).expect("valid histogram bounds")
}

fn bucket_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, BUCKET_SIGFIG).expect("valid histogram bounds")
}

impl CoreStats {
    /// `bucket` is the timeline's bucket width (at least 1 ms).
    pub fn new(measure_start: Instant, bucket: Duration, progress: Arc<Progress>) -> Self {
        CoreStats {
            measure_start,
            progress,
            requests: 0,
            errors: [0; ErrorKind::COUNT],
            error_samples: Default::default(),
            bytes: 0,
            status_classes: [0; 6],
            hist: latency_histogram(),
            lag: latency_histogram(),
            servers: Vec::new(),
            bucket_us: (bucket.as_micros() as u64).max(1000),
            buckets: Vec::new(),
            keys: KeyTally::default(),
            connects: 0,
            last_event: None,
        }
    }

    /// Timeline bucket width in ms.
    pub fn bucket_ms(&self) -> u64 {
        self.bucket_us / 1000
    }

    /// Schedule lag of one open-loop request sent from an idle connection.
    pub fn record_lag(&mut self, lag: Duration) {
        self.lag
            .saturating_record(lag.as_micros().min(LATENCY_MAX_US as u128) as u64);
    }

    /// Slot of a server id; allocates only the first time an id is seen.
    pub fn intern_server(&mut self, id: Option<&[u8]>) -> usize {
        let id = id.unwrap_or(NO_SERVER_ID);
        if let Some(i) = self.servers.iter().position(|(s, _)| s.as_slice() == id) {
            return i;
        }
        self.servers.push((id.to_vec(), 0));
        self.servers.len() - 1
    }

    fn bucket(&mut self, at: Instant) -> &mut Bucket {
        let us = at.saturating_duration_since(self.measure_start).as_micros() as u64;
        let i = (us / self.bucket_us) as usize;
        if i >= self.buckets.len() {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }

    /// A complete response (any status). 4xx/5xx also count as an error of that kind.
    pub fn record_response(
        &mut self,
        at: Instant,
        latency: Duration,
        status: u16,
        server: usize,
        bytes: u64,
    ) {
        let us = latency.as_micros().min(LATENCY_MAX_US as u128) as u64;
        self.requests += 1;
        self.bytes += bytes;
        self.hist.saturating_record(us);
        let class = (status / 100) as usize;
        self.status_classes[if (1..=5).contains(&class) { class } else { 0 }] += 1;
        if let Some(slot) = self.servers.get_mut(server) {
            slot.1 += 1;
        }
        let status_error = ErrorKind::from_status(status);
        let bucket = self.bucket(at);
        bucket.requests += 1;
        bucket
            .hist
            .get_or_insert_with(bucket_histogram)
            .saturating_record(us);
        if bucket.servers.len() <= server {
            bucket.servers.resize(server + 1, 0);
        }
        bucket.servers[server] += 1;
        if let Some(kind) = status_error {
            bucket.errors[kind as usize] += 1;
        }
        if let Some(kind) = status_error {
            self.count_error(kind, || format!("HTTP status {status}"));
        }
        self.last_event = Some(at);
        self.progress
            .requests
            .store(self.requests, Ordering::Relaxed);
    }

    /// The key of the connection a counted response came on (`server` is its slot).
    pub fn record_key(&mut self, key: u32, server: usize) {
        self.keys.record(key, server);
    }

    /// A request that got no usable response.
    pub fn record_error(&mut self, at: Instant, kind: ErrorKind, detail: impl FnOnce() -> String) {
        self.bucket(at).errors[kind as usize] += 1;
        self.count_error(kind, detail);
        self.last_event = Some(at);
    }

    fn count_error(&mut self, kind: ErrorKind, detail: impl FnOnce() -> String) {
        let i = kind as usize;
        self.errors[i] += 1;
        if self.error_samples[i].is_none() {
            self.error_samples[i] = Some(detail());
        }
        self.progress
            .errors
            .store(self.total_errors(), Ordering::Relaxed);
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// One bucket of the merged timeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BucketSummary {
    /// Whole seconds of the bucket start (kept from the one-second timeline).
    pub second: u64,
    /// Bucket start in ms since the measurement started.
    pub t_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// Only the kinds that occurred in this bucket.
    pub errors_by_kind: std::collections::BTreeMap<&'static str, u64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// `X-Server-Id` -> responses in this bucket (only ids that answered in it).
    pub servers: std::collections::BTreeMap<String, u64>,
}

/// All cores merged.
#[derive(Debug)]
pub struct Totals {
    pub requests: u64,
    pub errors: [u64; ErrorKind::COUNT],
    pub error_samples: [Option<String>; ErrorKind::COUNT],
    pub bytes: u64,
    pub status_classes: [u64; 6],
    pub hist: Histogram<u64>,
    pub lag: Histogram<u64>,
    /// Sorted by count (descending), then id.
    pub servers: Vec<(String, u64)>,
    pub timeline: Vec<BucketSummary>,
    /// Timeline bucket width in ms.
    pub bucket_ms: u64,
    /// With --keys: key -> server id -> responses.
    pub per_key: MergedTally,
    pub connects: u64,
    pub last_event: Option<Instant>,
}

impl Totals {
    pub fn total_errors(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Merges per-core results: counters add, histograms add bucket by bucket (so percentiles are of
/// the whole run, not averages of per-core percentiles), servers are joined by id.
pub fn merge(cores: Vec<CoreStats>) -> Totals {
    let bucket_ms = cores.first().map_or(1000, CoreStats::bucket_ms);
    let mut t = Totals {
        requests: 0,
        errors: [0; ErrorKind::COUNT],
        error_samples: Default::default(),
        bytes: 0,
        status_classes: [0; 6],
        hist: latency_histogram(),
        lag: latency_histogram(),
        servers: Vec::new(),
        timeline: Vec::new(),
        bucket_ms,
        per_key: MergedTally::new(),
        connects: 0,
        last_event: None,
    };
    let mut servers: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut bucket_servers: Vec<std::collections::BTreeMap<String, u64>> = Vec::new();
    for c in cores {
        t.requests += c.requests;
        t.bytes += c.bytes;
        t.connects += c.connects;
        for i in 0..ErrorKind::COUNT {
            t.errors[i] += c.errors[i];
            if t.error_samples[i].is_none() {
                t.error_samples[i] = c.error_samples[i].clone();
            }
        }
        for i in 0..6 {
            t.status_classes[i] += c.status_classes[i];
        }
        t.hist.add(&c.hist).expect("histograms share bounds");
        t.lag.add(&c.lag).expect("histograms share bounds");
        let ids: Vec<String> = c
            .servers
            .iter()
            .map(|(id, _)| String::from_utf8_lossy(id).into_owned())
            .collect();
        if !c.keys.map.is_empty() {
            merge_tally(&mut t.per_key, c.keys, &ids);
        }
        for (id, n) in c.servers {
            match servers.iter_mut().find(|(s, _)| *s == id) {
                Some(slot) => slot.1 += n,
                None => servers.push((id, n)),
            }
        }
        debug_assert_eq!(
            c.bucket_us / 1000,
            bucket_ms,
            "cores share the bucket width"
        );
        if buckets.len() < c.buckets.len() {
            buckets.resize_with(c.buckets.len(), Bucket::default);
            bucket_servers.resize_with(c.buckets.len(), Default::default);
        }
        for ((into, from), into_servers) in buckets
            .iter_mut()
            .zip(c.buckets)
            .zip(bucket_servers.iter_mut())
        {
            into.requests += from.requests;
            // As in the totals, a slot the core never interned is not counted.
            for (id, n) in ids.iter().zip(&from.servers).filter(|(_, n)| **n > 0) {
                *into_servers.entry(id.clone()).or_insert(0) += n;
            }
            for (e, n) in into.errors.iter_mut().zip(from.errors) {
                *e += n;
            }
            if let Some(h) = from.hist {
                match &mut into.hist {
                    Some(into) => into.add(&h).expect("histograms share bounds"),
                    None => into.hist = Some(h),
                }
            }
        }
        t.last_event = t.last_event.max(c.last_event);
    }
    t.servers = servers
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| (String::from_utf8_lossy(&id).into_owned(), n))
        .collect();
    t.servers
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    t.timeline = buckets
        .into_iter()
        .zip(bucket_servers)
        .enumerate()
        .map(|(i, (b, servers))| {
            let q = |p: f64| {
                b.hist
                    .as_ref()
                    .map_or(0.0, |h| h.value_at_quantile(p) as f64 / 1000.0)
            };
            let t_ms = i as u64 * bucket_ms;
            BucketSummary {
                second: t_ms / 1000,
                t_ms,
                requests: b.requests,
                errors: b.errors.iter().sum(),
                errors_by_kind: ErrorKind::ALL
                    .iter()
                    .filter(|k| b.errors[**k as usize] > 0)
                    .map(|k| (k.name(), b.errors[*k as usize]))
                    .collect(),
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                servers,
            }
        })
        .collect();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(start: Instant) -> CoreStats {
        CoreStats::new(start, Duration::from_secs(1), Arc::new(Progress::default()))
    }

    #[test]
    fn merging_adds_counts_and_keeps_whole_run_percentiles() {
        let start = Instant::now();
        let mut a = core(start);
        let mut b = core(start);
        let sa = a.intern_server(Some(b"s1"));
        let sb1 = b.intern_server(Some(b"s2"));
        let sb2 = b.intern_server(Some(b"s1"));
        // Core a: 90 fast responses; core b: 10 slow ones. The merged p50 is fast, the p99 slow,
        // which averaging per-core percentiles would get wrong.
        for _ in 0..90 {
            a.record_response(start, Duration::from_micros(100), 200, sa, 10);
        }
        for i in 0..10 {
            let slot = if i % 2 == 0 { sb1 } else { sb2 };
            b.record_response(
                start + Duration::from_millis(1500),
                Duration::from_millis(50),
                200,
                slot,
                10,
            );
        }
        b.record_error(start, ErrorKind::Timeout, || "t".into());
        let t = merge(vec![a, b]);
        assert_eq!(t.requests, 100);
        assert_eq!(t.bytes, 1000);
        assert_eq!(t.total_errors(), 1);
        assert_eq!(t.errors[ErrorKind::Timeout as usize], 1);
        assert_eq!(
            t.servers,
            vec![("s1".to_string(), 95), ("s2".to_string(), 5)]
        );
        let p50 = t.hist.value_at_quantile(0.5);
        let p99 = t.hist.value_at_quantile(0.99);
        assert!((99..=101).contains(&p50), "{p50}");
        assert!((49_900..=50_100).contains(&p99), "{p99}");
        assert_eq!(t.timeline.len(), 2);
        assert_eq!((t.timeline[0].requests, t.timeline[0].errors), (90, 1));
        assert_eq!(t.timeline[1].requests, 10);
        assert!((t.timeline[1].p99_ms - 50.0).abs() < 1.0);
    }

    #[test]
    fn error_statuses_are_responses_and_errors() {
        let start = Instant::now();
        let mut a = core(start);
        let s = a.intern_server(None);
        a.record_response(start, Duration::from_millis(1), 503, s, 0);
        a.record_response(start, Duration::from_millis(1), 404, s, 0);
        a.record_response(start, Duration::from_millis(1), 302, s, 0);
        let t = merge(vec![a]);
        assert_eq!(t.requests, 3);
        assert_eq!(t.errors[ErrorKind::Status5xx as usize], 1);
        assert_eq!(t.errors[ErrorKind::Status4xx as usize], 1);
        assert_eq!(t.status_classes, [0, 0, 0, 1, 1, 1]);
        assert_eq!(t.servers, vec![("-".to_string(), 3)]);
        assert_eq!(t.timeline[0].errors, 2);
        assert_eq!(t.timeline[0].errors_by_kind.get("5xx"), Some(&1));
        assert_eq!(t.timeline[0].errors_by_kind.get("4xx"), Some(&1));
        assert_eq!(t.timeline[0].errors_by_kind.len(), 2);
    }

    #[test]
    fn timeline_buckets_follow_the_width_and_merge_across_cores() {
        let start = Instant::now();
        let bucket = Duration::from_millis(100);
        let p = Arc::new(Progress::default());
        let mut a = CoreStats::new(start, bucket, p.clone());
        let mut b = CoreStats::new(start, bucket, p);
        let ms = Duration::from_millis;
        let (a1, a2) = (a.intern_server(Some(b"s1")), a.intern_server(Some(b"s2")));
        let b2 = b.intern_server(Some(b"s2"));
        a.record_response(start + ms(50), ms(1), 200, a1, 0);
        a.record_response(start + ms(60), ms(1), 200, a2, 0);
        b.record_response(start + ms(99), ms(1), 200, b2, 0);
        b.record_response(start + ms(1210), ms(1), 200, b2, 0);
        b.record_error(start + ms(150), ErrorKind::Timeout, || "t".into());
        a.record_error(start + ms(1250), ErrorKind::Reset, || "r".into());
        a.record_error(start + ms(1260), ErrorKind::Reset, || "r".into());
        let t = merge(vec![a, b]);
        assert_eq!(t.bucket_ms, 100);
        assert_eq!(t.timeline.len(), 13);
        assert_eq!((t.timeline[0].t_ms, t.timeline[0].second), (0, 0));
        assert_eq!(t.timeline[0].requests, 3);
        assert!(t.timeline[0].errors_by_kind.is_empty());
        let per = |i: usize| {
            t.timeline[i]
                .servers
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>()
        };
        // Slots differ per core (s2 is a's slot 1 and b's slot 0): merged by id.
        assert_eq!(per(0), [("s1", 1), ("s2", 2)]);
        assert!(per(1).is_empty(), "errors carry no server");
        assert_eq!(per(12), [("s2", 1)]);
        assert_eq!(t.timeline[1].errors, 1);
        assert_eq!(t.timeline[1].errors_by_kind.get("timeout"), Some(&1));
        let last = &t.timeline[12];
        assert_eq!((last.t_ms, last.second), (1200, 1));
        assert_eq!(last.errors, 2);
        assert_eq!(last.errors_by_kind.get("reset"), Some(&2));
        assert_eq!(t.timeline[5].requests + t.timeline[5].errors, 0);
    }

    #[test]
    fn progress_counters_follow_the_totals() {
        let start = Instant::now();
        let p = Arc::new(Progress::default());
        let mut a = CoreStats::new(start, Duration::from_secs(1), p.clone());
        a.record_response(start, Duration::from_millis(1), 200, 0, 0);
        a.record_error(start, ErrorKind::Reset, || "r".into());
        assert_eq!(p.requests.load(Ordering::Relaxed), 1);
        assert_eq!(p.errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn io_errors_are_classified_by_phase() {
        let e = |k| io::Error::from(k);
        use io::ErrorKind as K;
        assert_eq!(
            ErrorKind::from_io(&e(K::ConnectionRefused), true),
            ErrorKind::ConnectRefused
        );
        assert_eq!(
            ErrorKind::from_io(&e(K::AddrNotAvailable), true),
            ErrorKind::ConnectOther
        );
        assert_eq!(
            ErrorKind::from_io(&e(K::ConnectionReset), false),
            ErrorKind::Reset
        );
        assert_eq!(
            ErrorKind::from_io(&e(K::BrokenPipe), false),
            ErrorKind::Reset
        );
        assert_eq!(
            ErrorKind::from_io(&e(K::TimedOut), true),
            ErrorKind::Timeout
        );
    }
}
