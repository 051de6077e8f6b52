//! The command journal: every command id the agent ran and how it ended,
//! on disk, so the same id sent again (after a reconnect, or a coordinator
//! or agent restart) is answered from here instead of running twice.
//!
//! `<data_dir>/journal/journal.jsonl` is append-only JSON lines, each
//! fsynced before the agent acts on it:
//! - `started` before the step runs,
//! - `stage` when a step enters a part that must not be redone blindly
//!   (a deploy's after_deploy hook),
//! - `finished` with the outcome, before the outcome is sent.
//!
//! `executions.log` beside it gets a line `executed <id>` for every actual
//! run, so tests can check that no step ran twice.
//!
//! At start-up the file is compacted (records older than [`MAX_AGE`] or
//! beyond the newest [`MAX_RECORDS`] dropped) and rewritten atomically; a
//! torn last line from a crash is skipped. Records that were started but
//! never finished are handed to the caller to settle (see
//! `commands::recover`).

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};

pub const JOURNAL_DIR: &str = "journal";
pub const JOURNAL_FILE: &str = "journal.jsonl";
pub const EXECUTIONS_FILE: &str = "executions.log";
/// Records older than this are dropped at start-up.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many records are kept (the newest) at start-up.
pub const MAX_RECORDS: usize = 10_000;
/// `executions.log` is cut to its newest lines past this at start-up.
pub const MAX_EXECUTION_LINES: usize = 2 * MAX_RECORDS;

/// The final phase of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Succeeded,
    Failed,
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub phase: Phase,
    pub message: String,
    /// The instance's release after the step (empty strings: none).
    #[serde(default)]
    pub release_version: String,
    #[serde(default)]
    pub release_digest: String,
}

/// Which step a journaled command ran. On disk it is the step's word
/// (`"drain"`, `"deploy"`), as journals have always held it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKind {
    Stage,
    Drain,
    Stop,
    Deploy,
    Start,
    Verify,
    Undrain,
    SetWeight,
    /// A step this agent version does not know, written by another one;
    /// kept as written so the record still loads and is settled.
    Other(String),
}

impl RecordKind {
    const KNOWN: [RecordKind; 8] = [
        RecordKind::Stage,
        RecordKind::Drain,
        RecordKind::Stop,
        RecordKind::Deploy,
        RecordKind::Start,
        RecordKind::Verify,
        RecordKind::Undrain,
        RecordKind::SetWeight,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            RecordKind::Stage => "stage",
            RecordKind::Drain => "drain",
            RecordKind::Stop => "stop",
            RecordKind::Deploy => "deploy",
            RecordKind::Start => "start",
            RecordKind::Verify => "verify",
            RecordKind::Undrain => "undrain",
            RecordKind::SetWeight => "set_weight",
            RecordKind::Other(s) => s,
        }
    }

    pub fn from_word(s: &str) -> RecordKind {
        RecordKind::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or_else(|| RecordKind::Other(s.to_string()))
    }
}

impl std::fmt::Display for RecordKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RecordKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RecordKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RecordKind, D::Error> {
        let word = String::deserialize(d)?;
        Ok(RecordKind::from_word(&word))
    }
}

/// Everything known about one command id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub instance: String,
    pub kind: RecordKind,
    pub started_ms: i64,
    /// Stages entered, in order.
    pub stages: Vec<String>,
    pub outcome: Option<Outcome>,
    pub finished_ms: Option<i64>,
}

/// One line of the journal file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Line {
    Started {
        id: String,
        instance: String,
        kind: RecordKind,
        at_ms: i64,
    },
    Stage {
        id: String,
        stage: String,
        at_ms: i64,
    },
    Finished {
        id: String,
        #[serde(flatten)]
        outcome: Outcome,
        at_ms: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("command {0} is already in the journal")]
    Duplicate(String),
    #[error("command {0} is not in the journal")]
    Unknown(String),
}

/// The journal of one agent; cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    file: fs::File,
    executions: fs::File,
    records: HashMap<String, Record>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_append(path: &Path) -> Result<fs::File, FsError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err(path))
}

impl Journal {
    /// `<data_dir>/journal`.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join(JOURNAL_DIR)
    }

    /// Loads and compacts the journal in `<data_dir>/journal/`.
    pub fn open(data_dir: &Path) -> Result<Journal, FsError> {
        Journal::open_at(data_dir, now_ms())
    }

    /// [`Journal::open`] with the time to compact against.
    pub fn open_at(data_dir: &Path, now_ms: i64) -> Result<Journal, FsError> {
        let dir = Journal::dir(data_dir);
        fsutil::create_dir(&dir, 0o755)?;
        let path = dir.join(JOURNAL_FILE);
        let mut records = read_records(&path)?;
        let oldest = now_ms.saturating_sub(i64::try_from(MAX_AGE.as_millis()).unwrap_or(i64::MAX));
        records.retain(|_, r| r.finished_ms.unwrap_or(r.started_ms) >= oldest);
        if records.len() > MAX_RECORDS {
            let mut by_age: Vec<(i64, String)> = records
                .values()
                .map(|r| (r.started_ms, r.id.clone()))
                .collect();
            by_age.sort();
            let drop = by_age.len() - MAX_RECORDS;
            for (_, id) in by_age.into_iter().take(drop) {
                records.remove(&id);
            }
        }
        // Rewrite what is kept, oldest first, then append from there.
        let mut sorted: Vec<&Record> = records.values().collect();
        sorted.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
        let mut text = Vec::new();
        for r in sorted {
            for line in lines_of(r) {
                if let Ok(mut bytes) = serde_json::to_vec(&line) {
                    bytes.push(b'\n');
                    text.extend_from_slice(&bytes);
                }
            }
        }
        fsutil::write_atomic(&path, &text, fsutil::PUBLIC)?;
        let file = open_append(&path)?;
        let executions_path = dir.join(EXECUTIONS_FILE);
        if let Ok(log) = fs::read_to_string(&executions_path) {
            let lines: Vec<&str> = log.lines().collect();
            if lines.len() > MAX_EXECUTION_LINES {
                let mut kept = lines[lines.len() - MAX_EXECUTION_LINES..].join("\n");
                kept.push('\n');
                fsutil::write_atomic(&executions_path, kept.as_bytes(), fsutil::PUBLIC)?;
            }
        }
        let executions = open_append(&executions_path)?;
        Ok(Journal {
            inner: Arc::new(Mutex::new(Inner {
                dir,
                file,
                executions,
                records,
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map as it was before
        // the append that panicked: still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Record> {
        self.lock().records.get(id).cloned()
    }

    /// Records that were started and never finished.
    pub fn unfinished(&self) -> Vec<Record> {
        let mut v: Vec<Record> = self
            .lock()
            .records
            .values()
            .filter(|r| r.outcome.is_none())
            .cloned()
            .collect();
        v.sort_by_key(|r| r.started_ms);
        v
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `id` as started and logs the execution; both fsynced before
    /// this returns. Refuses an id already journaled.
    pub fn start(&self, id: &str, instance: &str, kind: RecordKind) -> Result<(), JournalError> {
        let mut inner = self.lock();
        if inner.records.contains_key(id) {
            return Err(JournalError::Duplicate(id.to_string()));
        }
        let at_ms = now_ms();
        inner.append(&Line::Started {
            id: id.to_string(),
            instance: instance.to_string(),
            kind: kind.clone(),
            at_ms,
        })?;
        let path = inner.dir.join(EXECUTIONS_FILE);
        let line = format!("executed {}\n", one_line(id));
        inner
            .executions
            .write_all(line.as_bytes())
            .and_then(|()| inner.executions.sync_data())
            .map_err(io_err(&path))?;
        inner.records.insert(
            id.to_string(),
            Record {
                id: id.to_string(),
                instance: instance.to_string(),
                kind,
                started_ms: at_ms,
                stages: Vec::new(),
                outcome: None,
                finished_ms: None,
            },
        );
        Ok(())
    }

    /// Records that `id` entered `stage`.
    pub fn stage(&self, id: &str, stage: &str) -> Result<(), JournalError> {
        let mut inner = self.lock();
        if !inner.records.contains_key(id) {
            return Err(JournalError::Unknown(id.to_string()));
        }
        inner.append(&Line::Stage {
            id: id.to_string(),
            stage: stage.to_string(),
            at_ms: now_ms(),
        })?;
        if let Some(r) = inner.records.get_mut(id) {
            r.stages.push(stage.to_string());
        }
        Ok(())
    }

    /// Records the outcome of `id` (fsynced). The first outcome stays.
    pub fn finish(&self, id: &str, outcome: Outcome) -> Result<(), JournalError> {
        let mut inner = self.lock();
        match inner.records.get(id) {
            None => return Err(JournalError::Unknown(id.to_string())),
            Some(r) if r.outcome.is_some() => return Ok(()),
            Some(_) => {}
        }
        let at_ms = now_ms();
        inner.append(&Line::Finished {
            id: id.to_string(),
            outcome: outcome.clone(),
            at_ms,
        })?;
        if let Some(r) = inner.records.get_mut(id) {
            r.outcome = Some(outcome);
            r.finished_ms = Some(at_ms);
        }
        Ok(())
    }

    /// Forgets an unfinished record, so the id runs anew when it is sent
    /// again (for steps that are safe to redo after an agent restart).
    pub fn forget_unfinished(&self, id: &str) -> Result<(), JournalError> {
        let mut inner = self.lock();
        if inner.records.get(id).is_none_or(|r| r.outcome.is_some()) {
            return Ok(());
        }
        // The rewrite drops it from the file too; until then a `forgotten`
        // stage marks it for the reader.
        inner.append(&Line::Stage {
            id: id.to_string(),
            stage: FORGOTTEN.to_string(),
            at_ms: now_ms(),
        })?;
        inner.records.remove(id);
        Ok(())
    }
}

/// A stage that removes the record when the file is read back.
const FORGOTTEN: &str = "forgotten";

impl Inner {
    fn append(&mut self, line: &Line) -> Result<(), FsError> {
        let path = self.dir.join(JOURNAL_FILE);
        let mut bytes =
            serde_json::to_vec(line).map_err(|e| io_err(&path)(std::io::Error::other(e)))?;
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err(&path))
    }
}

fn one_line(id: &str) -> String {
    id.replace(['\n', '\r'], " ")
}

fn lines_of(r: &Record) -> Vec<Line> {
    let mut v = vec![Line::Started {
        id: r.id.clone(),
        instance: r.instance.clone(),
        kind: r.kind.clone(),
        at_ms: r.started_ms,
    }];
    for s in &r.stages {
        v.push(Line::Stage {
            id: r.id.clone(),
            stage: s.clone(),
            at_ms: r.started_ms,
        });
    }
    if let (Some(o), Some(at)) = (&r.outcome, r.finished_ms) {
        v.push(Line::Finished {
            id: r.id.clone(),
            outcome: o.clone(),
            at_ms: at,
        });
    }
    v
}

fn read_records(path: &Path) -> Result<HashMap<String, Record>, FsError> {
    let mut records: HashMap<String, Record> = HashMap::new();
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(io_err(path)(e)),
    };
    let reader = std::io::BufReader::new(file);
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed: Line = match serde_json::from_slice(&line) {
            Ok(l) => l,
            Err(e) => {
                // A torn write from a crash; it was never acted on, because
                // nothing is acted on before its line is synced.
                tracing::warn!(path = %path.display(), line = n + 1, "skipping unreadable journal line: {e}");
                continue;
            }
        };
        match parsed {
            Line::Started {
                id,
                instance,
                kind,
                at_ms,
            } => {
                records.entry(id.clone()).or_insert(Record {
                    id,
                    instance,
                    kind,
                    started_ms: at_ms,
                    stages: Vec::new(),
                    outcome: None,
                    finished_ms: None,
                });
            }
            Line::Stage { id, stage, .. } if stage == FORGOTTEN => {
                if records.get(&id).is_some_and(|r| r.outcome.is_none()) {
                    records.remove(&id);
                }
            }
            Line::Stage { id, stage, .. } => {
                if let Some(r) = records.get_mut(&id) {
                    r.stages.push(stage);
                }
            }
            Line::Finished { id, outcome, at_ms } => {
                if let Some(r) = records.get_mut(&id)
                    && r.outcome.is_none()
                {
                    r.outcome = Some(outcome);
                    r.finished_ms = Some(at_ms);
                }
            }
        }
    }
    Ok(records)
}

/// Every record in the journal of `data_dir`, read without changing
/// anything (safe while an agent is running; [`Journal::open`] is not).
pub fn read(data_dir: &Path) -> Result<Vec<Record>, FsError> {
    let mut v: Vec<Record> = read_records(&Journal::dir(data_dir).join(JOURNAL_FILE))?
        .into_values()
        .collect();
    v.sort_by(|a, b| (a.started_ms, &a.id).cmp(&(b.started_ms, &b.id)));
    Ok(v)
}

/// The ids in `executions.log`, one per actual run, in order. Read-only.
pub fn read_executions(data_dir: &Path) -> Vec<String> {
    fs::read_to_string(Journal::dir(data_dir).join(EXECUTIONS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("executed ").map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(msg: &str) -> Outcome {
        Outcome {
            phase: Phase::Succeeded,
            message: msg.into(),
            release_version: String::new(),
            release_digest: String::new(),
        }
    }

    #[test]
    fn records_survive_reopen_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        j.start("r1/web@h1/drain/1", "web", RecordKind::Drain)
            .expect("start");
        j.finish("r1/web@h1/drain/1", ok("drained"))
            .expect("finish");
        j.start("r1/web@h1/deploy/1", "web", RecordKind::Deploy)
            .expect("start");
        j.stage("r1/web@h1/deploy/1", "after_deploy")
            .expect("stage");
        assert!(matches!(
            j.start("r1/web@h1/drain/1", "web", RecordKind::Drain),
            Err(JournalError::Duplicate(_))
        ));
        drop(j);
        // A torn line from a crash mid-write.
        let path = Journal::dir(dir.path()).join(JOURNAL_FILE);
        let mut f = open_append(&path).expect("append");
        f.write_all(b"{\"event\":\"finished\",\"id\":\"r1/web@h1/dep")
            .expect("write");
        drop(f);

        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.len(), 2);
        let drain = j.get("r1/web@h1/drain/1").expect("drain");
        assert_eq!(drain.outcome, Some(ok("drained")));
        let unfinished = j.unfinished();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].stages, vec!["after_deploy".to_string()]);
        j.forget_unfinished("r1/web@h1/deploy/1").expect("forget");
        assert!(j.get("r1/web@h1/deploy/1").is_none());
        drop(j);
        let j = Journal::open(dir.path()).expect("reopen");
        assert!(j.get("r1/web@h1/deploy/1").is_none());
        assert_eq!(
            read_executions(dir.path()),
            vec!["r1/web@h1/drain/1", "r1/web@h1/deploy/1"]
        );
    }

    /// Journals on disk hold the kind as a word; they still read, and a
    /// record is written back the same way.
    #[test]
    fn a_journal_in_the_format_on_disk_reads_and_writes_the_same_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = Journal::dir(dir.path()).join(JOURNAL_FILE);
        fs::create_dir_all(Journal::dir(dir.path())).expect("dir");
        let at = now_ms();
        let text = format!(
            "{{\"event\":\"started\",\"id\":\"r1/web@h1/undrain/1\",\"instance\":\"web\",\"kind\":\"undrain\",\"at_ms\":{at}}}\n\
             {{\"event\":\"finished\",\"id\":\"r1/web@h1/undrain/1\",\"phase\":\"succeeded\",\"message\":\"in service\",\"at_ms\":{at}}}\n\
             {{\"event\":\"started\",\"id\":\"r1/web@h1/stage/1\",\"instance\":\"web\",\"kind\":\"stage\",\"at_ms\":{at}}}\n\
             {{\"event\":\"started\",\"id\":\"r1/web@h1/warm/1\",\"instance\":\"web\",\"kind\":\"warm\",\"at_ms\":{at}}}\n"
        );
        fs::write(&path, text).expect("write journal");
        let j = Journal::open(dir.path()).expect("open");
        let undrain = j.get("r1/web@h1/undrain/1").expect("undrain");
        assert_eq!(undrain.kind, RecordKind::Undrain);
        assert_eq!(undrain.outcome.map(|o| o.phase), Some(Phase::Succeeded));
        let stage = j.get("r1/web@h1/stage/1").expect("stage");
        assert_eq!(stage.kind, RecordKind::Stage);
        // A kind from another agent version still loads, as written.
        let warm = j.get("r1/web@h1/warm/1").expect("warm");
        assert_eq!(warm.kind, RecordKind::Other("warm".into()));
        j.start("r1/web@h1/verify/1", "web", RecordKind::Verify)
            .expect("start");
        j.start("r1/web@h1/weight/1", "web", RecordKind::SetWeight)
            .expect("start");
        drop(j);
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(
            j.get("r1/web@h1/weight/1").map(|r| r.kind),
            Some(RecordKind::SetWeight)
        );
        drop(j);
        let written = fs::read_to_string(&path).expect("read journal");
        assert!(written.contains("\"kind\":\"undrain\""), "{written}");
        assert!(written.contains("\"kind\":\"stage\""), "{written}");
        assert!(written.contains("\"kind\":\"warm\""), "{written}");
        assert!(written.contains("\"kind\":\"verify\""), "{written}");
        assert!(written.contains("\"kind\":\"set_weight\""), "{written}");
    }

    #[test]
    fn compaction_drops_old_and_excess_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path()).expect("open");
        for i in 0..5 {
            let id = format!("c{i}");
            j.start(&id, "web", RecordKind::Start).expect("start");
            j.finish(&id, ok("")).expect("finish");
        }
        drop(j);
        let later = now_ms() + i64::try_from(MAX_AGE.as_millis()).expect("ms") + 1000;
        let j = Journal::open_at(dir.path(), later).expect("reopen");
        assert!(j.is_empty());
    }
}
