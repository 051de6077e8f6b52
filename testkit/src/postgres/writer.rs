//! A bounded write load on the current primary that remembers which rows were acknowledged,
//! so that a failover's data loss is measured rather than assumed: after the promotion,
//! every acknowledged id is either on the new primary or reported lost.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::{PgEndpoint, PgError, PgNode};
use crate::pause;

/// The table the writer fills: `(id bigint primary key, written_at timestamptz)`.
pub const TABLE: &str = "drover_writes";

/// How much the writer writes, and how fast.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// It stops after this many inserts (acknowledged or not).
    pub max_rows: u64,
    /// It stops after this long.
    pub max_duration: Duration,
    /// Pause between two inserts.
    pub pause: Duration,
    /// An insert without an answer after this long counts as failed (its outcome unknown)
    /// and the connection is dropped: a primary cut off from the network does not hang it.
    pub insert_timeout: Duration,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            max_rows: 100_000,
            max_duration: Duration::from_secs(60),
            pause: Duration::from_millis(2),
            insert_timeout: Duration::from_secs(3),
        }
    }
}

/// One insert the server acknowledged (its commit returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    /// When the acknowledgement arrived.
    pub at: SystemTime,
}

/// What the writer did.
#[derive(Debug, Clone, Default)]
pub struct WriteLog {
    /// Acknowledged inserts, in id order.
    pub acked: Vec<Ack>,
    /// Inserts not acknowledged: refused (read-only, no server) or without an answer (their
    /// outcome unknown: they may have committed).
    pub failed: Vec<u64>,
    /// How many connection attempts and inserts failed.
    pub errors: u64,
    /// The first few distinct error messages and the last one.
    pub error_samples: Vec<String>,
}

impl WriteLog {
    /// Compares the acknowledged ids with the rows `new_primary` has: what a failover lost.
    pub fn lost_after_promotion(&self, new_primary: &PgNode) -> Result<DataLoss, PgError> {
        // Every id it tried: acknowledged or not, a row may be there.
        let tried = || {
            let acked = self.acked.iter().map(|a| a.id);
            acked.chain(self.failed.iter().copied())
        };
        let (Some(first), Some(last)) = (tried().min(), tried().max()) else {
            return Ok(DataLoss::default());
        };
        let sql = format!("SELECT id FROM {TABLE} WHERE id BETWEEN {first} AND {last} ORDER BY id");
        let out = new_primary.query(&sql)?;
        let mut present = BTreeSet::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            let id = line
                .parse::<u64>()
                .map_err(|_| new_primary.unexpected(&sql, line, "one id per line"))?;
            present.insert(id);
        }
        let mut loss = DataLoss {
            acknowledged: self.acked.len(),
            ..DataLoss::default()
        };
        for ack in &self.acked {
            if present.contains(&ack.id) {
                loss.kept += 1;
                if loss.lost.is_empty() {
                    loss.last_kept_at = Some(ack.at);
                }
            } else {
                loss.lost.push(ack.id);
                loss.first_lost_at.get_or_insert(ack.at);
                loss.last_lost_at = Some(ack.at);
            }
        }
        loss.unacknowledged_kept = self
            .failed
            .iter()
            .copied()
            .filter(|id| present.contains(id))
            .collect();
        Ok(loss)
    }
}

/// The acknowledged writes a failover lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataLoss {
    /// Inserts the old primary acknowledged.
    pub acknowledged: usize,
    /// Of those, how many the new primary has.
    pub kept: usize,
    /// Acknowledged ids the new primary does not have, ascending.
    pub lost: Vec<u64>,
    /// Ack time of the last write kept before the first lost one.
    pub last_kept_at: Option<SystemTime>,
    pub first_lost_at: Option<SystemTime>,
    pub last_lost_at: Option<SystemTime>,
    /// Ids the writer never saw acknowledged that the new primary has anyway (they
    /// committed, and the answer was lost with the old primary): not data loss.
    pub unacknowledged_kept: Vec<u64>,
}

impl DataLoss {
    /// The data-loss window: from the last acknowledged write that survived (or the first
    /// lost one, when none did) to the last lost one; zero when nothing was lost.
    pub fn window(&self) -> Duration {
        let (Some(first), Some(last)) = (self.first_lost_at, self.last_lost_at) else {
            return Duration::ZERO;
        };
        let from = self.last_kept_at.unwrap_or(first);
        last.duration_since(from).unwrap_or(Duration::ZERO)
    }
}

#[derive(Debug, Default)]
struct Shared {
    log: WriteLog,
    finished: bool,
}

/// A sequential insert load on its own thread and tokio runtime (usable from plain and async
/// tests alike): ids count up from the table's highest + 1, one insert at a time, each
/// acknowledged or failed. On an error it reconnects and goes on with the next id; it never
/// retries an id, whose first attempt may have committed.
#[derive(Debug)]
pub struct Writer {
    target: watch::Sender<PgEndpoint>,
    stop: watch::Sender<bool>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Connects to `target`, creates the table if needed, and starts writing. Fails when the
    /// first connection or the table does not work.
    pub fn start(target: PgEndpoint, options: WriterOptions) -> Result<Writer, PgError> {
        let (target_tx, target_rx) = watch::channel(target);
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PgError::Writer(format!("build its tokio runtime: {e}")))?;
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("pg-writer".to_string())
                .spawn(move || {
                    runtime.block_on(write_loop(target_rx, stop_rx, options, &shared, ready_tx));
                    lock(&shared).finished = true;
                })
                .map_err(|e| PgError::Writer(format!("spawn its thread: {e}")))?
        };
        let writer = Writer {
            target: target_tx,
            stop: stop_tx,
            shared,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(writer),
            Ok(Err(e)) => Err(PgError::Writer(e)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(PgError::Writer(format!(
                "no first connection and table at {} within 30 s",
                *writer.target.borrow()
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(PgError::Writer(
                "its thread ended before connecting".to_string(),
            )),
        }
    }

    /// Writes to `target` from the next insert on (after a promotion: the new primary).
    pub fn retarget(&self, target: PgEndpoint) {
        self.target.send_replace(target);
    }

    /// What it has done so far.
    pub fn log(&self) -> WriteLog {
        lock(&self.shared).log.clone()
    }

    /// How many inserts were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        lock(&self.shared).log.acked.len()
    }

    /// Whether it stopped on its own (row or time bound reached).
    pub fn is_finished(&self) -> bool {
        lock(&self.shared).finished
    }

    /// Waits until at least `count` inserts were acknowledged.
    pub fn wait_acknowledged(&self, count: usize, timeout: Duration) -> Result<(), PgError> {
        let start = Instant::now();
        loop {
            let (acked, finished, errors) = {
                let s = lock(&self.shared);
                (s.log.acked.len(), s.finished, s.log.error_samples.clone())
            };
            if acked >= count {
                return Ok(());
            }
            if finished || start.elapsed() >= timeout {
                return Err(PgError::Timeout {
                    node: "writer".to_string(),
                    what: format!("{count} inserts are acknowledged"),
                    timeout,
                    detail: format!(
                        "{acked} acknowledged{}; errors: {errors:?}",
                        if finished { ", writer finished" } else { "" }
                    ),
                });
            }
            pause(Duration::from_millis(10));
        }
    }

    /// [`WriteLog::lost_after_promotion`] of what it has done so far.
    pub fn lost_after_promotion(&self, new_primary: &PgNode) -> Result<DataLoss, PgError> {
        self.log().lost_after_promotion(new_primary)
    }

    /// Stops after the insert in flight and returns the log.
    pub fn stop(mut self) -> WriteLog {
        self.halt();
        std::mem::take(&mut lock(&self.shared).log)
    }

    fn halt(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.halt();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn record_error(shared: &Mutex<Shared>, message: String) {
    let mut s = lock(shared);
    s.log.errors += 1;
    const KEEP: usize = 8;
    if s.log.error_samples.len() < KEEP {
        if !s.log.error_samples.contains(&message) {
            s.log.error_samples.push(message);
        }
    } else if let Some(last) = s.log.error_samples.last_mut() {
        *last = message;
    }
}

/// tokio-postgres shows "db error" and keeps postgres's message in its source.
fn explain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn connect(target: &PgEndpoint) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(target.host.to_string())
        .port(target.port)
        .user(&target.user)
        .password(&target.password)
        .dbname(&target.dbname)
        .application_name("drover-testkit-writer")
        .connect_timeout(Duration::from_secs(2))
        .connect(NoTls)
        .await?;
    // The connection ends when the client is dropped or the server goes away.
    tokio::spawn(connection);
    Ok(client)
}

async fn write_loop(
    mut target: watch::Receiver<PgEndpoint>,
    mut stop: watch::Receiver<bool>,
    options: WriterOptions,
    shared: &Mutex<Shared>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let first = target.borrow_and_update().clone();
    let setup = async {
        let client = connect(&first).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, \
                 written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ))
            .await?;
        let next: i64 = client
            .query_one(
                &format!("SELECT coalesce(max(id), 0) + 1 FROM {TABLE}"),
                &[],
            )
            .await?
            .get(0);
        Ok::<_, tokio_postgres::Error>((client, next))
    };
    let (client, mut next) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "connect to {first} and create {TABLE}: {}",
                explain(&e)
            )));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut client = Some(client);
    let started = tokio::time::Instant::now();
    let insert = format!("INSERT INTO {TABLE} (id) VALUES ($1)");
    let mut attempted = 0u64;
    while attempted < options.max_rows
        && !*stop.borrow()
        && started.elapsed() < options.max_duration
    {
        if target.has_changed().unwrap_or(false) {
            target.borrow_and_update();
            client = None;
        }
        let Some(c) = client.as_ref() else {
            let endpoint = target.borrow().clone();
            match connect(&endpoint).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    record_error(shared, format!("connect to {endpoint}: {}", explain(&e)));
                    idle(&mut stop, Duration::from_millis(50).max(options.pause)).await;
                }
            }
            continue;
        };
        let id = next;
        next += 1;
        attempted += 1;
        match tokio::time::timeout(options.insert_timeout, c.execute(&insert, &[&id])).await {
            Ok(Ok(_)) => {
                lock(shared).log.acked.push(Ack {
                    id: id as u64,
                    at: SystemTime::now(),
                });
            }
            Ok(Err(e)) => {
                lock(shared).log.failed.push(id as u64);
                if e.is_closed() || e.as_db_error().is_none() {
                    client = None;
                }
                record_error(shared, format!("insert {id}: {}", explain(&e)));
            }
            Err(_) => {
                lock(shared).log.failed.push(id as u64);
                client = None;
                record_error(
                    shared,
                    format!("insert {id}: no answer within {:?}", options.insert_timeout),
                );
            }
        }
        idle(&mut stop, options.pause).await;
    }
}

/// Sleeps `d`, or less when asked to stop.
async fn idle(stop: &mut watch::Receiver<bool>, d: Duration) {
    if d.is_zero() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}
