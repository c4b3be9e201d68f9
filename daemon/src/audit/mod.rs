//! The audit log: append-only, hash-chained JSON Lines.
//!
//! # Layout
//!
//! `DIR/audit.jsonl` is the active file (created 0600; `DIR` is created 0700). When the next
//! record would push it past [`AuditOptions::max_file_bytes`], it is renamed to
//! `DIR/audit-<seq of its first record, 12 digits zero-padded>.jsonl` and a fresh active file
//! is started, so the lexical order of the rotated files is the chain order.
//!
//! # Records
//!
//! One record per line:
//! `{"seq":N,"ts":"2025-01-01T12:00:00.123Z","event":"grant", …event fields…,"prev":"<64 hex>","hash":"<64 hex>"}`
//!
//! - `seq` starts at 1 and grows by one per record, across files.
//! - `ts` is RFC 3339 UTC with milliseconds.
//! - `prev` is the previous record's `hash` (64 zeros for seq 1).
//! - `hash` is the lowercase hex SHA-256 of the exact bytes of the line without its
//!   `,"hash":"…"` member, i.e. of `{…,"prev":"…"}`. The writer serialises the record
//!   without `hash` and splices `,"hash":"HEX"` in before the final `}`; the verifier strips
//!   that fixed-length suffix and recomputes, so no JSON canonicalisation is involved.
//!
//! # Durability
//!
//! Every record goes out in one `write(2)` of the whole line ([`Durability::Write`]);
//! control-plane records are also `fdatasync`ed before [`AuditLog::append`] returns
//! ([`Durability::Sync`]), so the caller acknowledges an action only once its record is on
//! disk. A failed write is undone (the file is truncated back to its last complete record)
//! and the chain does not advance. At [`AuditLog::open`] a partial last line (a crash in the
//! middle of a write) is truncated away and a [`AuditEvent::LogRecovered`] record says so.
//!
//! One process writes a directory at a time; nothing here locks it: the broker holds the
//! data directory's lock (`broker::persist::lock_data_dir`) for as long as it writes.
//!
//! Submodules: [`event`] (the record types), [`verify`](mod@verify) (chain verification and the reader
//! used by `agentd audit`), [`redact`] (PASSWORD literals out of SQL text), [`sink`] (the
//! non-blocking statement channel and its writer task).

pub mod event;
pub mod key;
pub mod redact;
pub mod sink;
pub mod verify;

pub use event::{AuditEvent, StatementOverflow};
pub use key::AuditKey;
pub use redact::redact_secrets;
pub use sink::{spawn_writer, StatementSink};
pub use verify::{read_records, verify, Follower, Problem, ProblemKind, RawRecord, VerifyReport};

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Name of the active file inside the audit directory.
pub const ACTIVE_FILE: &str = "audit.jsonl";

/// `prev` of the first record: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Default [`AuditOptions::max_file_bytes`]: 64 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Length of the `,"hash":"<64 hex>"}` suffix every record line ends with (before `\n`).
pub(crate) const HASH_SUFFIX_LEN: usize = 75;

/// Name of the rotated file whose first record has sequence number `first_seq`:
/// `audit-000000000042.jsonl`.
pub fn rotated_file_name(first_seq: u64) -> String {
    format!("audit-{first_seq:012}.jsonl")
}

/// The first sequence number encoded in a rotated file's name, or `None` when `name` is not
/// of the form `audit-<12 digits>.jsonl`.
pub fn parse_rotated_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How an audit log behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// Rotate before a record would make the active file larger than this many bytes
    /// (a file always takes at least one record). Default 64 MiB.
    pub max_file_bytes: u64,
    /// `fdatasync` after [`Durability::Sync`] records (and before a rotation). Default true;
    /// tests may turn it off.
    pub fsync: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            fsync: true,
        }
    }
}

/// How hard [`AuditLog::append`] works to make a record durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Write, then `fdatasync` when [`AuditOptions::fsync`] is set. For control-plane events
    /// (requests, decisions, grants, revokes, expiry): the caller acknowledges the action
    /// only after this returns.
    Sync,
    /// One `write(2)`, no fsync. For connection and statement events: the record survives a
    /// crash of the process, not a power cut.
    Write,
}

/// Errors of the audit log. None carries record contents.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An I/O operation on `path` failed (the write side: disk full, permissions, …).
    #[error("audit log: {op} {}: {source}", path.display())]
    Io {
        /// What we were doing: `open`, `write`, `rename`, …
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The existing log cannot be continued: its last record does not parse. Run
    /// `agentd audit verify` and move the directory aside.
    #[error("audit log {} is malformed at line {line}: {detail}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number, or 0 when unknown (counted from the end).
        line: u64,
        /// What is wrong.
        detail: String,
    },
    /// An event could not be serialised (should not happen with [`AuditEvent`]).
    #[error("audit log: could not serialise an event: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A thread panicked while holding the log's lock; the log refuses further appends.
    #[error("audit log: lock poisoned by a panic")]
    Poisoned,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuditError + 'a {
    move |source| AuditError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// SHA-256 of `bytes` as 64 lowercase hex digits.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

#[derive(Serialize)]
struct RecordOut<'a> {
    seq: u64,
    ts: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
    prev: &'a str,
}

/// Serialise one record line (with the trailing `\n`) and return it with its hash.
fn encode_record(
    seq: u64,
    ts: &str,
    event: &AuditEvent,
    prev: &str,
    key: Option<&AuditKey>,
) -> Result<(Vec<u8>, String), AuditError> {
    let mut line = serde_json::to_vec(&RecordOut {
        seq,
        ts,
        event,
        prev,
    })?;
    let hash = key::record_hash(key, seq, &line);
    // The body always ends in `}`; splice the hash member in before it.
    line.pop();
    line.extend_from_slice(b",\"hash\":\"");
    line.extend_from_slice(hash.as_bytes());
    line.extend_from_slice(b"\"}\n");
    Ok((line, hash))
}

/// The append-only, hash-chained audit log of one directory. `Send + Sync`; share it in an
/// `Arc`. Appends are serialised by an internal mutex.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    active: PathBuf,
    options: AuditOptions,
    state: Mutex<State>,
    /// The chain key (system mode), see [`key`].
    key: Option<AuditKey>,
}

#[derive(Debug)]
struct State {
    /// The active file, or `None` after a rotation whose new file could not be opened yet.
    file: Option<File>,
    /// Size of the active file up to its last complete record, in bytes.
    size: u64,
    /// Set after a failed write that could not be truncated away: truncate before the next.
    dirty: bool,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Hash of the last record (the next record's `prev`).
    last_hash: String,
    /// Sequence number of the active file's first record (`next_seq` while it is empty).
    file_first_seq: u64,
}

/// The last complete record found in a file.
struct Tail {
    seq: u64,
    hash: String,
}

impl AuditLog {
    /// Open (or create) the audit log in `dir`, continuing its chain.
    ///
    /// Creates `dir` (0700) and `dir/audit.jsonl` (0600) when missing. Reads the last record
    /// of the active file (or, when that is empty, of the newest rotated file) to recover the
    /// next sequence number and the last hash. A partial last line in the active file is
    /// truncated away and a [`AuditEvent::LogRecovered`] record is appended (synced).
    ///
    /// Errors: [`AuditError::Io`] for filesystem failures; [`AuditError::Malformed`] when the
    /// last complete record (or a rotated file's name/contents) cannot be parsed.
    pub fn open(dir: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        Self::open_with_key(dir, options, None)
    }

    /// [`AuditLog::open`] with a keyed chain: the key at `key_file` is loaded, or created to
    /// apply from the next record (see [`key`]).
    ///
    /// Errors: as [`AuditLog::open`], plus the key file's errors.
    pub fn open_keyed(
        dir: &Path,
        options: AuditOptions,
        key_file: &Path,
    ) -> Result<AuditLog, AuditError> {
        Self::open_with_key(dir, options, Some(key_file))
    }

    fn open_with_key(
        dir: &Path,
        options: AuditOptions,
        key_file: Option<&Path>,
    ) -> Result<AuditLog, AuditError> {
        crate::fsutil::create_private_dir(dir).map_err(io_err("create directory", dir))?;
        let active = dir.join(ACTIVE_FILE);
        let existed = active.exists();
        let mut file = open_active(&active)?;
        if !existed {
            sync_dir(dir)?;
        }
        let mut len = file.metadata().map_err(io_err("stat", &active))?.len();

        // Drop a partial last line, if any.
        let mut discarded = 0;
        if len > 0 {
            let complete = complete_prefix_len(&mut file, &active, len)?;
            if complete < len {
                discarded = len - complete;
                file.set_len(complete)
                    .map_err(io_err("truncate", &active))?;
                file.sync_all().map_err(io_err("sync", &active))?;
                len = complete;
            }
        }

        let (tail, file_first_seq) = if len > 0 {
            let tail = last_record(&mut file, &active, len)?;
            let first = first_record_seq(&mut file, &active)?;
            (Some(tail), first)
        } else {
            let tail = match newest_rotated(dir)? {
                Some(path) => {
                    let mut f = File::open(&path).map_err(io_err("open", &path))?;
                    let flen = f.metadata().map_err(io_err("stat", &path))?.len();
                    if flen == 0 {
                        None
                    } else {
                        if complete_prefix_len(&mut f, &path, flen)? != flen {
                            return Err(AuditError::Malformed {
                                path,
                                line: 0,
                                detail: "rotated file ends in a partial line".into(),
                            });
                        }
                        Some(last_record(&mut f, &path, flen)?)
                    }
                }
                None => None,
            };
            let first = tail.as_ref().map_or(1, |t| t.seq + 1);
            (tail, first)
        };
        let (next_seq, last_hash) = match tail {
            Some(t) => (t.seq + 1, t.hash),
            None => (1, GENESIS_HASH.to_string()),
        };
        let key = key_file
            .map(|path| AuditKey::load_or_create(path, next_seq))
            .transpose()?;
        let log = AuditLog {
            key,
            dir: dir.to_path_buf(),
            active,
            options,
            state: Mutex::new(State {
                file: Some(file),
                size: len,
                dirty: false,
                next_seq,
                last_hash,
                file_first_seq,
            }),
        };
        if discarded > 0 {
            tracing::warn!(
                discarded_bytes = discarded,
                "audit log ended in a partial record; truncated it"
            );
            log.append(
                &AuditEvent::LogRecovered {
                    discarded_bytes: discarded,
                },
                Durability::Sync,
            )?;
        }
        Ok(log)
    }

    /// The first record hashed with the chain key, when the log is keyed.
    pub fn keyed_from(&self) -> Option<u64> {
        self.key.as_ref().map(|k| k.from)
    }

    /// Verifies the chain with this log's key ([`verify::verify_with_key`]).
    ///
    /// Errors: as [`verify()`].
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        verify::verify_with_key(&self.dir, self.key.as_ref())
    }

    /// The audit directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number of the last record written (0 when the log is empty).
    ///
    /// Errors: [`AuditError::Poisoned`].
    pub fn last_seq(&self) -> Result<u64, AuditError> {
        let state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        Ok(state.next_seq - 1)
    }

    /// Append one record and return its sequence number.
    ///
    /// The record is written with a single `write_all` of the whole line; with
    /// [`Durability::Sync`] (and [`AuditOptions::fsync`]) it is also `fdatasync`ed before
    /// this returns. Rotates first when the line would push the active file past
    /// [`AuditOptions::max_file_bytes`].
    ///
    /// Errors: [`AuditError::Io`] (e.g. ENOSPC). On error nothing is recorded: the file is
    /// truncated back to its last complete record, the sequence number and hash do not
    /// advance, and later appends continue a valid chain.
    pub fn append(&self, event: &AuditEvent, durability: Durability) -> Result<u64, AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let ts = now_rfc3339();
        let (line, hash) = encode_record(
            state.next_seq,
            &ts,
            event,
            &state.last_hash,
            self.key.as_ref(),
        )?;
        let seq = state.next_seq;
        self.write_lines(&mut state, &line, seq, seq, hash, durability)?;
        Ok(seq)
    }

    /// Append several records under one lock with as few writes as possible (one, unless a
    /// rotation falls inside the batch), each write with `durability`: the statement writer
    /// uses [`Durability::Write`]; the broker uses [`Durability::Sync`] to record a request,
    /// its decision and its grant with one fdatasync.
    ///
    /// Returns the sequence number of the last record written, or `None` for an empty batch.
    /// Errors: as [`AuditLog::append`]; records of the batch written before a failed write
    /// (at a rotation boundary) stay written.
    pub fn append_batch(
        &self,
        events: &[AuditEvent],
        durability: Durability,
    ) -> Result<Option<u64>, AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let ts = now_rfc3339();
        let mut buf = Vec::new();
        let mut first_in_buf = state.next_seq;
        let mut seq = state.next_seq;
        let mut prev = state.last_hash.clone();
        let mut last = None;
        for event in events {
            let (line, hash) = encode_record(seq, &ts, event, &prev, self.key.as_ref())?;
            let would_be = state.size + (buf.len() + line.len()) as u64;
            if !buf.is_empty() && would_be > self.options.max_file_bytes {
                // Flush what fits in the current file; the next write rotates.
                self.write_lines(
                    &mut state,
                    &buf,
                    first_in_buf,
                    seq - 1,
                    prev.clone(),
                    durability,
                )?;
                buf.clear();
                first_in_buf = seq;
            }
            buf.extend_from_slice(&line);
            prev = hash;
            last = Some(seq);
            seq += 1;
        }
        if !buf.is_empty() {
            self.write_lines(&mut state, &buf, first_in_buf, seq - 1, prev, durability)?;
        }
        Ok(last)
    }

    /// Write `bytes` (complete lines for records `first..=last`, `last_hash` being the hash
    /// of record `last`), rotating first if needed; commit the state only on success.
    fn write_lines(
        &self,
        state: &mut State,
        bytes: &[u8],
        first: u64,
        last: u64,
        last_hash: String,
        durability: Durability,
    ) -> Result<(), AuditError> {
        debug_assert_eq!(first, state.next_seq);
        if state.size > 0 && state.size + bytes.len() as u64 > self.options.max_file_bytes {
            self.rotate(state)?;
        }
        self.ensure_active(state)?;
        let size = state.size;
        let Some(file) = state.file.as_mut() else {
            return Err(AuditError::Poisoned);
        };
        if state.dirty {
            file.set_len(size)
                .map_err(io_err("truncate", &self.active))?;
            state.dirty = false;
        }
        let mut result = file.write_all(bytes).map_err(io_err("write", &self.active));
        if result.is_ok() && durability == Durability::Sync && self.options.fsync {
            result = file.sync_data().map_err(io_err("sync", &self.active));
        }
        if let Err(e) = result {
            // Undo whatever part of the line reached the file so the chain stays valid.
            if file.set_len(size).is_err() {
                state.dirty = true;
            }
            return Err(e);
        }
        if state.size == 0 {
            state.file_first_seq = first;
        }
        state.size += bytes.len() as u64;
        state.next_seq = last + 1;
        state.last_hash = last_hash;
        Ok(())
    }

    /// Open a new active file after a rotation.
    fn ensure_active(&self, state: &mut State) -> Result<(), AuditError> {
        if state.file.is_none() {
            let file = open_active(&self.active)?;
            sync_dir(&self.dir)?;
            let len = file.metadata().map_err(io_err("stat", &self.active))?.len();
            if len > 0 {
                // Only we write here; a non-empty file after our rotation is someone else's.
                return Err(AuditError::Malformed {
                    path: self.active.clone(),
                    line: 0,
                    detail: "a new active file appeared with content after a rotation".into(),
                });
            }
            state.size = 0;
            state.dirty = false;
            state.file_first_seq = state.next_seq;
            state.file = Some(file);
        }
        Ok(())
    }

    /// Rename the active file to `audit-<first seq>.jsonl`; the next write opens a new one.
    fn rotate(&self, state: &mut State) -> Result<(), AuditError> {
        if let Some(file) = state.file.as_mut() {
            if state.dirty {
                file.set_len(state.size)
                    .map_err(io_err("truncate", &self.active))?;
                state.dirty = false;
            }
            if self.options.fsync {
                file.sync_all().map_err(io_err("sync", &self.active))?;
            }
        }
        let target = self.dir.join(rotated_file_name(state.file_first_seq));
        if target.exists() {
            return Err(AuditError::Io {
                op: "rotate",
                path: target,
                source: io::Error::new(io::ErrorKind::AlreadyExists, "rotated file exists"),
            });
        }
        std::fs::rename(&self.active, &target).map_err(io_err("rename", &self.active))?;
        state.file = None;
        state.size = 0;
        state.file_first_seq = state.next_seq;
        if self.options.fsync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn open_active(path: &Path) -> Result<File, AuditError> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io_err("open", path))
}

/// fsync a directory so a created or renamed entry persists (a no-op off Unix).
fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync directory", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// The newest rotated file in `dir`, if any.
fn newest_rotated(dir: &Path) -> Result<Option<PathBuf>, AuditError> {
    Ok(verify::rotated_files(dir)?.pop().map(|(_, p)| p))
}

const TAIL_BLOCK: u64 = 64 * 1024;

/// Length of the prefix of the file that ends in `\n` (0 when there is no newline).
fn complete_prefix_len(file: &mut File, path: &Path, len: u64) -> Result<u64, AuditError> {
    let mut end = len;
    let mut block = vec![0u8; TAIL_BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(TAIL_BLOCK);
        let n = (end - start) as usize;
        read_at(file, path, start, &mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn read_at(file: &mut File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<(), AuditError> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(io_err("read", path))
}

/// The last record of a file whose `len` bytes end in `\n`.
fn last_record(file: &mut File, path: &Path, len: u64) -> Result<Tail, AuditError> {
    // The start of the last line is after the newline preceding the final one.
    let line_start = complete_prefix_len(file, path, len - 1)?;
    let line_len = usize::try_from(len - line_start).map_err(|_| AuditError::Malformed {
        path: path.to_path_buf(),
        line: 0,
        detail: "last line too long".into(),
    })?;
    let mut line = vec![0u8; line_len];
    read_at(file, path, line_start, &mut line)?;
    line.pop(); // the newline
    parse_tail(&line).ok_or_else(|| AuditError::Malformed {
        path: path.to_path_buf(),
        line: 0,
        detail: "the last record has no valid seq and hash".into(),
    })
}

fn parse_tail(line: &[u8]) -> Option<Tail> {
    let (_, hash) = verify::split_hash(line)?;
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    Some(Tail {
        seq,
        hash: hash.to_string(),
    })
}

/// The `seq` of the file's first line.
fn first_record_seq(file: &mut File, path: &Path) -> Result<u64, AuditError> {
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read", path))?;
    let mut reader = io::BufReader::new(&mut *file);
    let mut line = Vec::new();
    io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(io_err("read", path))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    parse_tail(&line)
        .map(|t| t.seq)
        .ok_or_else(|| AuditError::Malformed {
            path: path.to_path_buf(),
            line: 1,
            detail: "the first record has no valid seq and hash".into(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    pub(crate) fn stmt(i: u64) -> AuditEvent {
        AuditEvent::Statement {
            grant_id: format!("g_{}", i % 3),
            session: i,
            kind: "query".into(),
            statement: None,
            text: format!("SELECT {i}"),
            truncated: false,
            overflow: None,
        }
    }

    pub(crate) fn no_fsync(max: u64) -> AuditOptions {
        AuditOptions {
            max_file_bytes: max,
            fsync: false,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn record_shape_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
        assert_eq!(log.last_seq().unwrap(), 0);
        let seq = log
            .append(
                &AuditEvent::DaemonStart {
                    pid: 7,
                    version: "0.1.0".into(),
                },
                Durability::Sync,
            )
            .unwrap();
        assert_eq!(seq, 1);
        assert_eq!(log.append(&stmt(1), Durability::Write).unwrap(), 2);
        let text = std::fs::read_to_string(dir.path().join(ACTIVE_FILE)).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with(r#"{"seq":1,"ts":""#), "{first}");
        assert!(
            first.contains(r#","event":"daemon_start","pid":7,"version":"0.1.0","prev":"0000"#),
            "{first}"
        );
        let (body, hash) = verify::split_hash(first.as_bytes()).unwrap();
        assert_eq!(sha256_hex(&body), hash);
        let v = lines(&dir.path().join(ACTIVE_FILE));
        assert_eq!(v[1]["prev"], v[0]["hash"]);
        assert_eq!(v[1]["seq"], 2);
        let ts = v[0]["ts"].as_str().unwrap();
        assert!(ts.ends_with('Z') && ts.len() == 24, "{ts}");
        humantime::parse_rfc3339(ts).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn permissions() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/audit");
        let _log = AuditLog::open(&dir, AuditOptions::default()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(ACTIVE_FILE)), 0o600);
    }

    #[test]
    fn rotation_names_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(600)).unwrap();
        for i in 0..20 {
            log.append(&stmt(i), Durability::Write).unwrap();
        }
        let rotated = verify::rotated_files(dir.path()).unwrap();
        assert!(rotated.len() >= 3, "{rotated:?}");
        assert_eq!(rotated[0].0, 1);
        for (first, path) in &rotated {
            let v = lines(path);
            assert_eq!(v[0]["seq"].as_u64().unwrap(), *first);
            assert!(std::fs::metadata(path).unwrap().len() <= 600);
        }
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 20);
        assert_eq!(report.first_seq, Some(1));
        assert_eq!(report.last_seq, Some(20));
        assert_eq!(report.files.len(), rotated.len() + 1);
    }

    #[test]
    fn oversized_record_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(10)).unwrap();
        for i in 0..3 {
            log.append(&stmt(i), Durability::Write).unwrap();
        }
        assert_eq!(verify::rotated_files(dir.path()).unwrap().len(), 2);
        assert!(verify(dir.path()).unwrap().ok());
    }

    #[test]
    fn reopen_continues_chain() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
            for i in 0..3 {
                log.append(&stmt(i), Durability::Write).unwrap();
            }
        }
        let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
        assert_eq!(log.last_seq().unwrap(), 3);
        assert_eq!(log.append(&stmt(9), Durability::Sync).unwrap(), 4);
        let v = lines(&dir.path().join(ACTIVE_FILE));
        assert_eq!(v.len(), 4);
        assert_eq!(v[3]["prev"], v[2]["hash"]);
        assert!(verify(dir.path()).unwrap().ok());
    }

    #[test]
    fn reopen_after_rotation_with_empty_active_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), no_fsync(400)).unwrap();
            for i in 0..5 {
                log.append(&stmt(i), Durability::Write).unwrap();
            }
        }
        // Simulate a crash right after a rotation: the active file is missing.
        let active = dir.path().join(ACTIVE_FILE);
        let content = std::fs::read(&active).unwrap();
        let first: serde_json::Value =
            serde_json::from_slice(content.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let first_seq = first["seq"].as_u64().unwrap();
        std::fs::rename(&active, dir.path().join(rotated_file_name(first_seq))).unwrap();

        let log = AuditLog::open(dir.path(), no_fsync(400)).unwrap();
        assert_eq!(log.last_seq().unwrap(), 5);
        log.append(&stmt(5), Durability::Write).unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.last_seq, Some(6));
    }

    #[test]
    fn reopen_rotates_with_the_right_name() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), no_fsync(500)).unwrap();
            for i in 0..4 {
                log.append(&stmt(i), Durability::Write).unwrap();
            }
        }
        let log = AuditLog::open(dir.path(), no_fsync(500)).unwrap();
        for i in 4..12 {
            log.append(&stmt(i), Durability::Write).unwrap();
        }
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        for (first, path) in verify::rotated_files(dir.path()).unwrap() {
            assert_eq!(lines(&path)[0]["seq"].as_u64().unwrap(), first);
        }
    }

    #[test]
    fn partial_line_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
            for i in 0..3 {
                log.append(&stmt(i), Durability::Write).unwrap();
            }
        }
        let active = dir.path().join(ACTIVE_FILE);
        let good_len = std::fs::metadata(&active).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&active).unwrap();
        f.write_all(br#"{"seq":4,"ts":"2025-"#).unwrap();
        drop(f);

        let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
        assert_eq!(log.last_seq().unwrap(), 4);
        let v = lines(&active);
        assert_eq!(v.len(), 4);
        assert_eq!(v[3]["event"], "log_recovered");
        assert_eq!(v[3]["discarded_bytes"], 20);
        assert_eq!(v[3]["seq"], 4);
        assert!(std::fs::metadata(&active).unwrap().len() > good_len);
        assert!(verify(dir.path()).unwrap().ok());
    }

    #[test]
    fn partial_only_line_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ACTIVE_FILE), b"{\"seq\":1,").unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
        assert_eq!(log.last_seq().unwrap(), 1);
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
    }

    #[test]
    fn malformed_last_record_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ACTIVE_FILE), b"not json\n").unwrap();
        let err = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap_err();
        assert!(matches!(err, AuditError::Malformed { .. }), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn failed_write_does_not_advance_the_chain() {
        // /dev/full: every write fails with ENOSPC. Point the active file at it via a
        // symlink, then swap in a regular file and check the chain continues.
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
        log.append(&stmt(0), Durability::Write).unwrap();
        let active = dir.path().join(ACTIVE_FILE);
        let saved = std::fs::read(&active).unwrap();
        {
            let mut state = log.state.lock().unwrap();
            let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
            state.file = Some(full);
        }
        let err = log.append(&stmt(1), Durability::Write).unwrap_err();
        match &err {
            AuditError::Io { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}")
            }
            other => panic!("{other}"),
        }
        assert!(log
            .append_batch(&[stmt(2), stmt(3)], Durability::Write)
            .is_err());
        assert_eq!(log.last_seq().unwrap(), 1);
        {
            let mut state = log.state.lock().unwrap();
            state.file = Some(open_active(&active).unwrap());
            state.dirty = false;
        }
        assert_eq!(std::fs::read(&active).unwrap(), saved);
        assert_eq!(log.append(&stmt(4), Durability::Sync).unwrap(), 2);
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 2);
    }

    #[test]
    fn failed_write_is_truncated_away() {
        // A write that lands partially (simulated) is cut back before the next record.
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(1 << 20)).unwrap();
        log.append(&stmt(0), Durability::Write).unwrap();
        {
            let mut state = log.state.lock().unwrap();
            state
                .file
                .as_mut()
                .unwrap()
                .write_all(b"{\"seq\":2,\"half")
                .unwrap();
            state.dirty = true;
        }
        log.append(&stmt(1), Durability::Write).unwrap();
        assert!(verify(dir.path()).unwrap().ok());
    }

    #[test]
    fn batch_rotates_inside() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(700)).unwrap();
        log.append(&stmt(0), Durability::Write).unwrap();
        let events: Vec<_> = (1..15).map(stmt).collect();
        assert_eq!(
            log.append_batch(&events, Durability::Write).unwrap(),
            Some(15)
        );
        assert_eq!(log.append_batch(&[], Durability::Write).unwrap(), None);
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 15);
        assert!(report.files.len() > 2);
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), no_fsync(4096)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        if i % 10 == 0 {
                            log.append_batch(&[stmt(t), stmt(i)], Durability::Write)
                                .unwrap();
                        } else {
                            log.append(&stmt(i), Durability::Write).unwrap();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.records, 4 * 55);
    }

    #[test]
    fn send_sync() {
        fn check<T: Send + Sync>() {}
        check::<AuditLog>();
    }

    #[test]
    fn rotated_names() {
        assert_eq!(rotated_file_name(42), "audit-000000000042.jsonl");
        assert_eq!(
            parse_rotated_file_name("audit-000000000042.jsonl"),
            Some(42)
        );
        assert_eq!(parse_rotated_file_name("audit-42.jsonl"), None);
        assert_eq!(parse_rotated_file_name("audit.jsonl"), None);
        assert_eq!(parse_rotated_file_name("audit-00000000004x.jsonl"), None);
    }
}
