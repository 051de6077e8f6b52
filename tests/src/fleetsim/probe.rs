//! Report-to-visible latency: every simulated report carries a sequence
//! number in `HostMetrics.uptime_secs` (a per-host base plus the number of
//! reports sent, so it still reads like an uptime that grows), the sender
//! notes when it sent it, and an operator's `WatchHosts` stream reports when
//! the coordinator shows it. Sender and watcher share this process's
//! monotonic clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use drover_proto::v1::control_service_client::ControlServiceClient;
use drover_proto::v1::{WatchHostsRequest, host_event};
use tokio_util::sync::CancellationToken;

use super::stats::Samples;

/// Reports per host whose send times are remembered: more than can be in
/// flight at once.
const RING: usize = 8;
const SEQ_BITS: u32 = 24;
const TIME_BITS: u32 = 40;

/// Send times of recent reports, per host.
#[derive(Debug)]
pub struct Probe {
    start: Instant,
    /// Per host: `(seq << 40) | micros since start`, RING slots.
    slots: Vec<AtomicU64>,
    bases: Vec<u64>,
    recording: AtomicBool,
}

/// One ring slot: the report's sequence number and when it was sent.
fn pack(seq: u64, us: u64) -> u64 {
    ((seq & ((1 << SEQ_BITS) - 1)) << TIME_BITS) | (us & ((1 << TIME_BITS) - 1))
}

impl Probe {
    pub fn new(hosts: usize) -> Probe {
        Probe {
            start: Instant::now(),
            slots: (0..hosts * RING).map(|_| AtomicU64::new(0)).collect(),
            // Uptimes between one and about twelve days, different per host.
            bases: (0..hosts as u64)
                .map(|i| 86_400 + (i.wrapping_mul(2_654_435_761) % 1_000_000))
                .collect(),
            recording: AtomicBool::new(false),
        }
    }

    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The `uptime_secs` host `idx` reports with its report number `seq`.
    pub fn uptime(&self, idx: usize, seq: u64) -> u64 {
        self.bases.get(idx).copied().unwrap_or(0) + seq
    }

    /// Notes that host `idx` sent report `seq` now.
    pub fn sent(&self, idx: usize, seq: u64) {
        if let Some(slot) = self.slots.get(idx * RING + (seq as usize % RING)) {
            slot.store(pack(seq, self.now_us()), Ordering::Release);
        }
    }

    /// How long ago host `idx` sent the report showing `uptime`, if it is
    /// one of its recent ones.
    pub fn delay_us(&self, idx: usize, uptime: u64) -> Option<(u64, u64)> {
        let seq = uptime.checked_sub(*self.bases.get(idx)?)?;
        let v = self
            .slots
            .get(idx * RING + (seq as usize % RING))?
            .load(Ordering::Acquire);
        if v >> TIME_BITS != seq & ((1 << SEQ_BITS) - 1) {
            return None;
        }
        let sent = v & ((1 << TIME_BITS) - 1);
        Some((seq, self.now_us().saturating_sub(sent)))
    }

    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::Release);
    }

    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }
}

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct WatchResult {
    /// Delays of reports seen while recording.
    pub delays: Samples,
    pub events: u64,
    /// Fresh snapshots after the first: the coordinator dropped us for
    /// being too slow and started over.
    pub resyncs: u64,
    /// Updates that matched no recent report (connects, disconnects,
    /// reports that fell out of the ring).
    pub unmatched: u64,
    pub error: Option<String>,
}

/// Host index from a simulated host id (`h00042` -> 42).
pub fn host_index(id: &str) -> Option<usize> {
    id.strip_prefix('h')?.parse().ok()
}

/// Watches the hosts `selector` matches until `stop`; `synced` fires once
/// the initial listing is through.
pub async fn watch(
    mut client: ControlServiceClient<tonic::transport::Channel>,
    selector: String,
    probe: Arc<Probe>,
    synced: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) -> WatchResult {
    let mut out = WatchResult::default();
    let mut stream = match client.watch_hosts(WatchHostsRequest { selector }).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            out.error = Some(format!("WatchHosts: {e}"));
            synced.notify_one();
            return out;
        }
    };
    let mut last_seq: Vec<u64> = Vec::new();
    let mut syncs = 0u64;
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = stream.message() => m,
        };
        let ev = match msg {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                out.error = Some("the coordinator ended the watch".into());
                break;
            }
            Err(e) => {
                out.error = Some(format!("watch stream: {e}"));
                break;
            }
        };
        out.events += 1;
        let kind = host_event::Kind::try_from(ev.kind).unwrap_or(host_event::Kind::Unspecified);
        match kind {
            host_event::Kind::Synced => {
                syncs += 1;
                if syncs == 1 {
                    synced.notify_one();
                } else {
                    out.resyncs += 1;
                }
                continue;
            }
            host_event::Kind::Updated => {}
            _ => continue,
        }
        let Some(host) = ev.host else { continue };
        let (Some(idx), Some(uptime)) = (
            host_index(&host.host_id),
            host.metrics.as_ref().map(|m| m.uptime_secs),
        ) else {
            out.unmatched += 1;
            continue;
        };
        if idx >= last_seq.len() {
            last_seq.resize(idx + 1, 0);
        }
        match probe.delay_us(idx, uptime) {
            Some((seq, us)) if seq > last_seq[idx] => {
                last_seq[idx] = seq;
                if probe.recording() {
                    out.delays.push(us);
                }
            }
            _ => out.unmatched += 1,
        }
    }
    out
}
