//! Per-source limits of one listener: open connections per client address and a token bucket of
//! new connections per second (a burst of one second's worth), shared by every core. The table is
//! sharded, locked only at a connection's start and end, and only when a limit is set; it holds
//! at most [`MAX_SOURCES`] addresses (a client past that is refused, so that a flood of addresses
//! cannot grow it without bound), and forgets an address once it has nothing open and a full
//! bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked at once per listener.
pub const MAX_SOURCES: usize = 1 << 20;
const SHARDS: usize = 64;

struct Entry {
    active: u32,
    tokens: f64,
    refilled: Instant,
}

/// Why a source was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// At max_connections_per_ip.
    TooMany,
    /// Over max_new_connections_per_ip_per_s.
    TooFast,
    /// The table is full of other sources.
    Full,
}

pub struct IpTable {
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
    sources: AtomicUsize,
}

impl Default for IpTable {
    fn default() -> Self {
        IpTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sources: AtomicUsize::new(0),
        }
    }
}

/// An admitted connection; its slot is given back when dropped.
pub struct IpLease<'a> {
    table: &'a IpTable,
    ip: IpAddr,
}

impl IpTable {
    fn shard(&self, ip: &IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        let h = match ip {
            IpAddr::V4(v) => u32::from(*v) as usize,
            IpAddr::V6(v) => {
                let o = v.octets();
                usize::from_le_bytes(o[8..16].try_into().unwrap_or_default())
                    ^ usize::from_le_bytes(o[0..8].try_into().unwrap_or_default())
            }
        };
        self.shards[h.wrapping_mul(0x9E37_79B9) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Admits one more connection from `ip` at `now` under the limits (None: no limit).
    pub fn admit(
        &self,
        ip: IpAddr,
        now: Instant,
        max_connections: Option<u32>,
        per_second: Option<u32>,
    ) -> Result<IpLease<'_>, Refused> {
        let ip = ip.to_canonical();
        let mut shard = self.shard(&ip);
        let e = match shard.entry(ip) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if self.sources.load(Ordering::Relaxed) >= MAX_SOURCES {
                    return Err(Refused::Full);
                }
                self.sources.fetch_add(1, Ordering::Relaxed);
                v.insert(Entry {
                    active: 0,
                    tokens: per_second.map_or(0.0, f64::from),
                    refilled: now,
                })
            }
        };
        if max_connections.is_some_and(|m| e.active >= m) {
            return Err(Refused::TooMany);
        }
        if let Some(rate) = per_second {
            let rate = f64::from(rate);
            let dt = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens = (e.tokens + dt * rate).min(rate);
            e.refilled = now;
            if e.tokens < 1.0 {
                return Err(Refused::TooFast);
            }
            e.tokens -= 1.0;
        }
        e.active += 1;
        Ok(IpLease { table: self, ip })
    }

    /// Forgets the addresses with nothing open whose buckets are full again at `now` (called
    /// now and then by the control plane).
    pub fn sweep(&self, now: Instant, per_second: Option<u32>) {
        for s in &self.shards {
            let mut m = s.lock().unwrap_or_else(|p| p.into_inner());
            let before = m.len();
            m.retain(|_, e| {
                let full = per_second.is_none_or(|r| {
                    e.tokens
                        + now.saturating_duration_since(e.refilled).as_secs_f64() * f64::from(r)
                        >= f64::from(r)
                });
                e.active > 0 || !full
            });
            self.sources.fetch_sub(before - m.len(), Ordering::Relaxed);
        }
    }

    /// Addresses tracked now.
    pub fn sources(&self) -> usize {
        self.sources.load(Ordering::Relaxed)
    }
}

impl Drop for IpLease<'_> {
    fn drop(&mut self) {
        let mut shard = self.table.shard(&self.ip);
        if let Some(e) = shard.get_mut(&self.ip) {
            e.active = e.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn open_connections_per_source_are_capped_and_given_back() {
        let t = IpTable::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        let x = t.admit(a, now, Some(2), None).unwrap();
        let _y = t.admit(a, now, Some(2), None).unwrap();
        assert_eq!(t.admit(a, now, Some(2), None).err(), Some(Refused::TooMany));
        assert!(
            t.admit(b, now, Some(2), None).is_ok(),
            "another source is served"
        );
        drop(x);
        let _z = t.admit(a, now, Some(2), None).expect("a slot given back");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            t.admit(mapped, now, Some(2), None).err(),
            Some(Refused::TooMany),
            "one client, either form"
        );
    }

    #[test]
    fn new_connections_per_second_follow_a_token_bucket_with_a_second_of_burst() {
        let t = IpTable::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            drop(t.admit(a, t0, None, Some(5)).unwrap());
        }
        assert_eq!(t.admit(a, t0, None, Some(5)).err(), Some(Refused::TooFast));
        assert!(
            t.admit(a, t0 + Duration::from_millis(210), None, Some(5))
                .is_ok(),
            "one token back after 200 ms"
        );
        assert_eq!(
            t.admit(a, t0 + Duration::from_millis(210), None, Some(5))
                .err(),
            Some(Refused::TooFast)
        );
        t.sweep(t0 + Duration::from_secs(3), Some(5));
        assert_eq!(t.sources(), 0, "forgotten once idle with a full bucket");
    }
}
