//! Reading the audit log back: chain verification ([`verify`]) and the reader behind
//! `agentd audit` ([`read_records`], [`Follower`]).
//!
//! # What verification checks
//!
//! Files are walked in chain order (rotated files by name, then `audit.jsonl`). For every
//! line: that it ends in `\n` and in the `,"hash":"<64 hex>"}` suffix, that the hash matches
//! the SHA-256 of the line without that member ([`ProblemKind::Modified`]), that `seq` follows
//! the previous record's `seq` by one ([`ProblemKind::Missing`] for a gap,
//! [`ProblemKind::Reordered`] for a step backwards, a duplicate, or a gap filled later in the
//! same file), and that `prev` equals the previous record's `hash`
//! ([`ProblemKind::BrokenLink`]: e.g. a record edited and re-hashed).
//!
//! # What it cannot detect
//!
//! The chain is anchored only at its start (seq 1, `prev` all zeros), and nothing signs its
//! end. So:
//! - removing the newest records (truncating the tail at a line boundary, or deleting the
//!   newest files) leaves a valid, shorter chain — compare [`VerifyReport::last_seq`] with
//!   what you expect (e.g. a copy shipped elsewhere);
//! - removing the oldest files leaves a chain that starts later — [`VerifyReport::first_seq`]
//!   is then greater than 1, which is reported but not counted as a problem (retention may
//!   delete old files on purpose);
//! - someone able to rewrite the whole log can recompute every hash from the edit onwards.
//!   Hash chaining proves internal consistency, not authenticity; ship the latest hash off
//!   the machine to anchor it.

use super::{parse_rotated_file_name, AuditError, ACTIVE_FILE, GENESIS_HASH};
use super::{AuditEvent, AuditKey, HASH_SUFFIX_LEN};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Split a record line (without its `\n`) into the hashed body (`{…,"prev":"…"}`) and the
/// stated hash; `None` when the line does not end in `,"hash":"<64 lowercase hex>"}`.
pub(crate) fn split_hash(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    let cut = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let suffix = &line[cut..];
    let hex = suffix.strip_prefix(b",\"hash\":\"")?.strip_suffix(b"\"}")?;
    if hex.len() != 64
        || !hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let hash = std::str::from_utf8(hex).ok()?;
    let mut body = Vec::with_capacity(cut + 1);
    body.extend_from_slice(&line[..cut]);
    body.push(b'}');
    Some((body, hash))
}

/// The rotated files of `dir` as `(first seq, path)`, in chain order. Other names are ignored.
/// A missing directory has none.
pub(crate) fn rotated_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuditError::Io {
                op: "list",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| AuditError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_rotated_file_name) {
            files.push((seq, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// The files of the chain in order: rotated ones, then the active one if it exists.
fn chain_files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = rotated_files(dir)?.into_iter().map(|(_, p)| p).collect();
    let active = dir.join(ACTIVE_FILE);
    if active.exists() {
        files.push(active);
    }
    Ok(files)
}

/// What kind of damage verification found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The record's hash does not match its contents: it was edited in place.
    Modified,
    /// A gap in `seq`: records (or a whole rotated file) were removed.
    Missing,
    /// `seq` went backwards, repeated, or skipped ahead to records that come later in the
    /// same file: lines were moved or duplicated.
    Reordered,
    /// `prev` is not the previous record's hash although `seq` follows on: a record was
    /// replaced by one with a recomputed hash, or the first record's `prev` is not zeros.
    BrokenLink,
    /// Not a record: not JSON, no `seq`/`prev`, no hash suffix, empty, or a partial last
    /// line (a crash mid-write that the writer has not yet repaired at its next open).
    Malformed,
}

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// File name inside the audit directory, e.g. `audit-000000000001.jsonl`.
    pub file: String,
    /// 1-based line number in that file.
    pub line: u64,
    /// The record's `seq` when it could be read.
    pub seq: Option<u64>,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// A human-readable explanation.
    pub detail: String,
}

/// The result of [`verify`]; serialisable for `agentd audit verify --json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The files walked, by name, in chain order.
    pub files: Vec<String>,
    /// Lines that parsed as records (including modified ones).
    pub records: u64,
    /// `seq` of the first record; greater than 1 when the oldest files were removed.
    pub first_seq: Option<u64>,
    /// The highest `seq` seen.
    pub last_seq: Option<u64>,
    /// Everything wrong, in file order.
    pub problems: Vec<Problem>,
    /// The first record checked as an HMAC with the daemon's key (see
    /// [`super::key`]); `None` when the chain is not keyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyed_from: Option<u64>,
}

impl VerifyReport {
    /// True iff no problems were found.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

enum Entry {
    Record {
        line: u64,
        seq: u64,
        prev: String,
        hash: String,
        hash_ok: bool,
    },
    Malformed {
        line: u64,
        detail: String,
    },
}

#[derive(serde::Deserialize)]
struct Head {
    seq: u64,
    prev: String,
}

fn parse_line(line_no: u64, raw: &[u8], key: Option<&AuditKey>) -> Entry {
    let malformed = |detail: &str| Entry::Malformed {
        line: line_no,
        detail: detail.to_string(),
    };
    let Some(line) = raw.strip_suffix(b"\n") else {
        return malformed("partial last line (no newline at the end)");
    };
    if line.is_empty() {
        return malformed("empty line");
    }
    let Some((body, hash)) = split_hash(line) else {
        return malformed("no ,\"hash\":\"<64 hex>\"} at the end of the line");
    };
    let head: Head = match serde_json::from_slice(line) {
        Ok(head) => head,
        Err(e) => return malformed(&format!("not a JSON record with seq and prev: {e}")),
    };
    if head.prev.len() != 64 {
        return malformed("prev is not 64 hex digits");
    }
    Entry::Record {
        line: line_no,
        seq: head.seq,
        prev: head.prev,
        hash: hash.to_string(),
        hash_ok: super::key::record_hash(key, head.seq, &body) == hash,
    }
}

fn read_entries(path: &Path, key: Option<&AuditKey>) -> Result<Vec<Entry>, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        op: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| AuditError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        entries.push(parse_line(line_no, &buf, key));
    }
    Ok(entries)
}

/// Verify the hash chain of the audit log in `dir`: rotated files in order, then the active
/// file. See the module docs for what is and is not detected.
///
/// Errors: [`AuditError::Io`] when the directory or a file cannot be read (a missing
/// directory is an error; an empty one verifies with zero records). Damage is not an error:
/// it is listed in [`VerifyReport::problems`].
///
/// A keyed log (an `audit.key` beside `dir`, see [`super::key`]) is checked with that key;
/// when the key exists but cannot be read (it is the daemon user's), the error says to
/// verify through the daemon.
pub fn verify(dir: &Path) -> Result<VerifyReport, AuditError> {
    let key_path = AuditKey::path_beside(dir);
    let key = AuditKey::load(&key_path).map_err(|e| match e {
        AuditError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            AuditError::Io {
                op: "read the chain key (this log is keyed; verify it through the daemon: `sudo agentd audit verify`)",
                path: key_path.clone(),
                source,
            }
        }
        other => other,
    })?;
    verify_with_key(dir, key.as_ref())
}

/// [`verify`] with an explicit key (`None`: every record must carry a plain SHA-256).
///
/// Errors: as [`verify`].
pub fn verify_with_key(dir: &Path, key: Option<&AuditKey>) -> Result<VerifyReport, AuditError> {
    std::fs::metadata(dir).map_err(|source| AuditError::Io {
        op: "open",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut report = VerifyReport {
        keyed_from: key.map(|k| k.from),
        ..VerifyReport::default()
    };
    // The record with the highest seq so far: (seq, hash).
    let mut last: Option<(u64, String)> = None;
    // Malformed lines since that record (they may be the records a gap is missing).
    let mut malformed_since = 0u64;
    for path in chain_files(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        report.files.push(name.clone());
        let entries = read_entries(&path, key)?;
        let mut seqs: Vec<u64> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Record { seq, .. } => Some(*seq),
                Entry::Malformed { .. } => None,
            })
            .collect();
        seqs.sort_unstable();
        let mut problem = |line: u64, seq: Option<u64>, kind: ProblemKind, detail: String| {
            report.problems.push(Problem {
                file: name.clone(),
                line,
                seq,
                kind,
                detail,
            })
        };
        for entry in entries {
            let (line, seq, prev, hash, hash_ok) = match entry {
                Entry::Malformed { line, detail } => {
                    problem(line, None, ProblemKind::Malformed, detail);
                    malformed_since += 1;
                    continue;
                }
                Entry::Record {
                    line,
                    seq,
                    prev,
                    hash,
                    hash_ok,
                } => (line, seq, prev, hash, hash_ok),
            };
            report.records += 1;
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(report.last_seq.map_or(seq, |l| l.max(seq)));
            if !hash_ok {
                problem(
                    line,
                    Some(seq),
                    ProblemKind::Modified,
                    "hash does not match the record's contents".into(),
                );
            }
            match &last {
                None => {
                    if seq == 1 && prev != GENESIS_HASH {
                        problem(
                            line,
                            Some(seq),
                            ProblemKind::BrokenLink,
                            "the first record's prev is not all zeros".into(),
                        );
                    }
                }
                Some((last_seq, last_hash)) => {
                    let expected = last_seq + 1;
                    if seq < expected {
                        let detail = if seq == *last_seq {
                            format!("duplicate seq {seq}")
                        } else {
                            format!("seq {seq} comes after seq {last_seq}")
                        };
                        problem(line, Some(seq), ProblemKind::Reordered, detail);
                        // Keep following the highest record.
                        malformed_since = 0;
                        continue;
                    } else if seq == expected {
                        if prev != *last_hash && malformed_since == 0 {
                            problem(
                                line,
                                Some(seq),
                                ProblemKind::BrokenLink,
                                format!("prev is not the hash of record {last_seq}"),
                            );
                        }
                    } else {
                        let gap = seq - expected;
                        // Is any skipped seq later in this file? Anything in the gap seen
                        // earlier would have raised `last`, so a hit is ahead of us.
                        let start = seqs.partition_point(|&s| s < expected);
                        let later = seqs.get(start).is_some_and(|&s| s < seq);
                        if later {
                            problem(
                                line,
                                Some(seq),
                                ProblemKind::Reordered,
                                format!("seq {seq} comes before seq {expected}"),
                            );
                        } else if gap > malformed_since {
                            let detail = if gap == 1 {
                                format!("record {expected} is missing")
                            } else {
                                format!("records {expected}..={} are missing", seq - 1)
                            };
                            problem(line, Some(seq), ProblemKind::Missing, detail);
                        }
                    }
                }
            }
            last = Some((seq, hash));
            malformed_since = 0;
        }
    }
    Ok(report)
}

/// One line of the audit log as read back by [`read_records`] / [`Follower`].
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// The file it came from.
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    /// The line without its newline, decoded lossily as UTF-8.
    pub text: String,
    /// The parsed JSON, or `None` when the line is not JSON.
    pub value: Option<serde_json::Value>,
}

impl RawRecord {
    /// The event, when the line parses as a known [`AuditEvent`].
    pub fn event(&self) -> Option<AuditEvent> {
        self.value
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// Every complete line of the audit log in `dir`, in chain order (no verification; see
/// [`verify`]). A missing directory yields no records.
///
/// Errors: [`AuditError::Io`].
pub fn read_records(dir: &Path) -> Result<Vec<RawRecord>, AuditError> {
    let mut records = Vec::new();
    Follower::new(dir).poll(&mut |r| records.push(r))?;
    Ok(records)
}

/// Identity of a file across renames: (device, inode) on Unix.
type FileKey = (u64, u64);

#[cfg(unix)]
fn file_key(meta: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_key(meta: &std::fs::Metadata) -> FileKey {
    let created = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    (created, 0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Position {
    offset: u64,
    line: u64,
}

/// Tails the audit log for `agentd audit --follow`: each [`Follower::poll`] yields the
/// complete lines written since the previous one, in chain order, across rotations.
///
/// It remembers a read offset per file identity (device and inode on Unix), so the active
/// file being renamed to `audit-<seq>.jsonl` does not make it read anything twice, and a new
/// `audit.jsonl` is read from its start. A partial last line is left for the next poll.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    positions: HashMap<FileKey, Position>,
}

impl Follower {
    /// A follower of the log in `dir`; its first poll returns everything already there.
    pub fn new(dir: &Path) -> Follower {
        Follower {
            dir: dir.to_path_buf(),
            positions: HashMap::new(),
        }
    }

    /// Hand every new complete line to `sink`, in order; returns how many.
    ///
    /// Errors: [`AuditError::Io`] when a file cannot be read. A missing directory or active
    /// file is not an error (nothing new yet).
    pub fn poll(&mut self, sink: &mut dyn FnMut(RawRecord)) -> Result<usize, AuditError> {
        let handles = self.snapshot()?;
        let mut seen = HashSet::new();
        let mut count = 0;
        for (path, file) in handles {
            let meta = file.metadata().map_err(|source| AuditError::Io {
                op: "stat",
                path: path.clone(),
                source,
            })?;
            let key = file_key(&meta);
            seen.insert(key);
            let pos = self.positions.entry(key).or_default();
            if meta.len() < pos.offset {
                // Truncated under us (e.g. recovery of a partial line): start over.
                *pos = Position::default();
            }
            if meta.len() == pos.offset {
                continue;
            }
            count += read_from(&path, file, pos, sink)?;
        }
        self.positions.retain(|k, _| seen.contains(k));
        Ok(count)
    }

    /// Open every chain file such that no rotation happened between listing and opening.
    fn snapshot(&self) -> Result<Vec<(PathBuf, File)>, AuditError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = rotated_files(&self.dir)?;
            let mut handles = Vec::new();
            for (_, path) in &before {
                match File::open(path) {
                    Ok(f) => handles.push((path.clone(), f)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {} // pruned meanwhile
                    Err(source) => {
                        return Err(AuditError::Io {
                            op: "open",
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
            let active = self.dir.join(ACTIVE_FILE);
            match File::open(&active) {
                Ok(f) => handles.push((active, f)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(AuditError::Io {
                        op: "open",
                        path: active,
                        source,
                    })
                }
            }
            if attempts >= 5 || rotated_files(&self.dir)? == before {
                return Ok(handles);
            }
        }
    }
}

fn read_from(
    path: &Path,
    mut file: File,
    pos: &mut Position,
    sink: &mut dyn FnMut(RawRecord),
) -> Result<usize, AuditError> {
    let io_err = |source| AuditError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(pos.offset)).map_err(io_err)?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut count = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            break; // end, or a partial line: wait for the rest
        }
        pos.offset += n as u64;
        pos.line += 1;
        buf.pop();
        sink(RawRecord {
            file: path.to_path_buf(),
            line: pos.line,
            text: String::from_utf8_lossy(&buf).into_owned(),
            value: serde_json::from_slice(&buf).ok(),
        });
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{no_fsync, stmt};
    use crate::audit::{rotated_file_name, sha256_hex, AuditLog, Durability};

    /// A log of `n` statements in `dir`, rotated at `max` bytes.
    fn build(n: u64, max: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), no_fsync(max)).unwrap();
        for i in 0..n {
            log.append(&stmt(i), Durability::Write).unwrap();
        }
        dir
    }

    fn active(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(ACTIVE_FILE)
    }

    fn read_lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(path: &Path, lines: &[String]) {
        let mut s = lines.join("\n");
        s.push('\n');
        std::fs::write(path, s).unwrap();
    }

    fn kinds(report: &VerifyReport) -> Vec<(ProblemKind, Option<u64>)> {
        report.problems.iter().map(|p| (p.kind, p.seq)).collect()
    }

    #[test]
    fn clean_log_with_rotations_verifies() {
        let dir = build(40, 900);
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert!(report.files.len() >= 4, "{:?}", report.files);
        assert_eq!(report.files.last().unwrap(), ACTIVE_FILE);
        assert_eq!(report.files[0], rotated_file_name(1));
        assert_eq!(
            (report.records, report.first_seq, report.last_seq),
            (40, Some(1), Some(40))
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["records"], 40);
        assert_eq!(json["problems"], serde_json::json!([]));
    }

    #[test]
    fn empty_dir_verifies_and_missing_dir_errors() {
        let dir = tempfile::tempdir().unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.ok());
        assert_eq!(report.records, 0);
        assert_eq!(report.first_seq, None);
        assert!(verify(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn edited_field_is_modified() {
        let dir = build(6, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        assert!(lines[2].contains("SELECT 2"));
        lines[2] = lines[2].replace("SELECT 2", "SELECT 9");
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(kinds(&report), vec![(ProblemKind::Modified, Some(3))]);
        assert_eq!(report.problems[0].line, 3);
        assert_eq!(report.problems[0].file, ACTIVE_FILE);
    }

    #[test]
    fn edited_and_rehashed_is_a_broken_link() {
        let dir = build(6, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        let edited = lines[2].replace("SELECT 2", "SELECT 9");
        let (body, _) = split_hash(edited.as_bytes()).unwrap();
        let body = String::from_utf8(body).unwrap();
        let new_hash = sha256_hex(body.as_bytes());
        lines[2] = format!("{},\"hash\":\"{new_hash}\"}}", &body[..body.len() - 1]);
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(kinds(&report), vec![(ProblemKind::BrokenLink, Some(4))]);
    }

    #[test]
    fn deleted_line_is_missing() {
        let dir = build(6, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        lines.remove(3);
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(kinds(&report), vec![(ProblemKind::Missing, Some(5))]);
        assert!(report.problems[0].detail.contains("record 4"), "{report:?}");
    }

    #[test]
    fn swapped_lines_are_reordered() {
        let dir = build(6, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        lines.swap(2, 3);
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            kinds(&report),
            vec![
                (ProblemKind::Reordered, Some(4)),
                (ProblemKind::Reordered, Some(3))
            ]
        );
    }

    #[test]
    fn duplicated_line_is_reordered() {
        let dir = build(4, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        lines.insert(2, lines[1].clone());
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(kinds(&report), vec![(ProblemKind::Reordered, Some(2))]);
        assert!(report.problems[0].detail.contains("duplicate"));
    }

    #[test]
    fn truncated_mid_line_is_malformed() {
        let dir = build(5, 1 << 20);
        let bytes = std::fs::read(active(&dir)).unwrap();
        std::fs::write(active(&dir), &bytes[..bytes.len() - 30]).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(kinds(&report), vec![(ProblemKind::Malformed, None)]);
        assert_eq!(report.problems[0].line, 5);
        assert!(report.problems[0].detail.contains("partial"));
        assert_eq!(report.last_seq, Some(4));
    }

    #[test]
    fn garbage_line_is_malformed_only() {
        let dir = build(5, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        lines[2] = "this is not json".into();
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(kinds(&report), vec![(ProblemKind::Malformed, None)]);
        let mut lines = read_lines(&active(&dir));
        lines.insert(1, String::new());
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            kinds(&report),
            vec![
                (ProblemKind::Malformed, None),
                (ProblemKind::Malformed, None)
            ]
        );
    }

    #[test]
    fn deleted_middle_file_is_missing() {
        let dir = build(40, 900);
        let rotated = rotated_files(dir.path()).unwrap();
        assert!(rotated.len() >= 3);
        let (first, path) = &rotated[1];
        let (next_first, _) = &rotated[2];
        std::fs::remove_file(path).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            kinds(&report),
            vec![(ProblemKind::Missing, Some(*next_first))]
        );
        assert_eq!(report.problems[0].line, 1);
        assert_eq!(report.problems[0].file, rotated_file_name(*next_first));
        assert!(
            report.problems[0]
                .detail
                .contains(&format!("{first}..={}", next_first - 1)),
            "{report:?}"
        );
    }

    #[test]
    fn deleted_oldest_file_starts_later() {
        let dir = build(40, 900);
        let rotated = rotated_files(dir.path()).unwrap();
        std::fs::remove_file(&rotated[0].1).unwrap();
        let report = verify(dir.path()).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.first_seq, Some(rotated[1].0));
    }

    #[test]
    fn wrong_genesis_is_a_broken_link() {
        let dir = build(2, 1 << 20);
        let mut lines = read_lines(&active(&dir));
        let edited = lines[0].replace(GENESIS_HASH, &"1".repeat(64));
        let (body, _) = split_hash(edited.as_bytes()).unwrap();
        let body = String::from_utf8(body).unwrap();
        let hash = sha256_hex(body.as_bytes());
        lines[0] = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
        write_lines(&active(&dir), &lines);
        let report = verify(dir.path()).unwrap();
        // Record 1 claims a non-zero prev; record 2 no longer links to record 1's new hash.
        assert_eq!(
            kinds(&report),
            vec![
                (ProblemKind::BrokenLink, Some(1)),
                (ProblemKind::BrokenLink, Some(2))
            ]
        );
    }

    #[test]
    fn read_records_in_order() {
        let dir = build(25, 900);
        let records = read_records(dir.path()).unwrap();
        let seqs: Vec<u64> = records
            .iter()
            .map(|r| r.value.as_ref().unwrap()["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
        assert!(matches!(
            records[0].event(),
            Some(AuditEvent::Statement { .. })
        ));
        assert!(read_records(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn follower_sees_new_records_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let mut follower = Follower::new(dir.path());
        let mut got = Vec::new();
        let take = |f: &mut Follower, got: &mut Vec<u64>| {
            f.poll(&mut |r| got.push(r.value.unwrap()["seq"].as_u64().unwrap()))
                .unwrap()
        };
        assert_eq!(take(&mut follower, &mut got), 0);
        let log = AuditLog::open(dir.path(), no_fsync(700)).unwrap();
        for round in 0..6u64 {
            for i in 0..(round + 1) {
                log.append(&stmt(i), Durability::Write).unwrap();
            }
            take(&mut follower, &mut got);
            assert_eq!(take(&mut follower, &mut got), 0);
        }
        let n = log.last_seq().unwrap();
        assert!(rotated_files(dir.path()).unwrap().len() >= 2);
        assert_eq!(got, (1..=n).collect::<Vec<_>>());
    }

    #[test]
    fn follower_waits_for_a_complete_line() {
        let dir = build(2, 1 << 20);
        let mut follower = Follower::new(dir.path());
        let mut n = 0;
        follower.poll(&mut |_| n += 1).unwrap();
        assert_eq!(n, 2);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(active(&dir))
            .unwrap();
        f.write_all(b"{\"seq\":3,").unwrap();
        assert_eq!(follower.poll(&mut |_| {}).unwrap(), 0);
        f.write_all(b"\"x\":1}\n").unwrap();
        let mut texts = Vec::new();
        follower.poll(&mut |r| texts.push(r.text)).unwrap();
        assert_eq!(texts, vec!["{\"seq\":3,\"x\":1}".to_string()]);
    }
}
