//! A holder's count of what it has sent, kept where a SIGKILL cannot lose it.
//!
//! The ledger grants credits a block at a time, before the calls are sent. A
//! holder that dies holds some of its block unsent, and without more the next
//! grant has to count the whole reservation as spent (the calls it had out may
//! have been billed). So each holder counts, per period, the credits of the
//! calls it has sent less those answered unbilled, in a small file of its own:
//! eight bytes rewritten before each call goes out. A write that returned is in
//! the kernel's page cache, which outlives the process; only the machine's
//! crash loses it, and then the file is gone or stale and the reservation is
//! counted whole, as before.
//!
//! The reservation's row names the file (`sent_log`) and counts what the
//! checkpoint charged of it (`charged`). When the holder is dead on this host
//! (its pid gone, or reused since the file was made), the reaper counts as spent
//! what it sent and had not charged, and gives the rest back to the period. A
//! holder on another host, or one merely suspended, is counted whole: a
//! suspended process may wake and send what it holds.
//!
//! Layout of a file: bytes 0..8 the count (i64, little-endian), then the time
//! the file was made (RFC 3339), for the pid-reuse check.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

/// Where the files live: one directory per host, shared by every freshen.
fn dir() -> PathBuf {
    std::env::temp_dir().join("freshen-sent")
}

/// One holder's files, one per period it reserved in; removed when dropped
/// (the holder left: whatever it still holds is then counted whole).
#[derive(Debug)]
pub struct SentLog {
    worker: String,
    files: Mutex<HashMap<String, Counted>>,
}

#[derive(Debug)]
struct Counted {
    path: PathBuf,
    file: File,
    count: i64,
}

impl SentLog {
    pub fn new(worker: &str) -> SentLog {
        SentLog {
            worker: worker.to_owned(),
            files: Mutex::new(HashMap::new()),
        }
    }

    /// The file for `period`, made (count 0) the first time it is asked for.
    pub fn path(&self, period: &str) -> Result<String> {
        let mut files = self.files.lock().expect("sent log lock");
        if let Some(c) = files.get(period) {
            return Ok(c.path.display().to_string());
        }
        let dir = dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {} (the calls' sent counts)", dir.display()))?;
        let name: String = format!("{}-{}-{period}", self.worker, nonce())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let path = dir.join(name);
        let mut bytes = 0i64.to_le_bytes().to_vec();
        bytes.extend_from_slice(super::now_stamp().as_bytes());
        // Only this user may write it: the reaper trusts what it says.
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {} (the calls' sent count)", path.display()))?;
        file.write_all_at(&bytes, 0)
            .with_context(|| format!("writing {} (the calls' sent count)", path.display()))?;
        let shown = path.display().to_string();
        files.insert(
            period.to_owned(),
            Counted {
                path,
                file,
                count: 0,
            },
        );
        Ok(shown)
    }

    /// Adds `credits` (negative: an unbilled answer) to `period`'s count. A
    /// period without a file (no grant made one) or a failed write leaves the
    /// file's count low, which the reaper cannot tell: so a failed write
    /// removes the file, and the reservation is then counted whole.
    pub fn add(&self, period: &str, credits: i64) {
        let mut files = self.files.lock().expect("sent log lock");
        let Some(c) = files.get_mut(period) else {
            return;
        };
        c.count += credits;
        if let Err(e) = c.file.write_all_at(&c.count.to_le_bytes(), 0) {
            tracing::warn!(
                "cannot write {}: {e}; a crash will count this run's reservation as spent whole",
                c.path.display()
            );
            let _ = std::fs::remove_file(&c.path);
            files.remove(period);
        }
    }
}

impl Drop for SentLog {
    fn drop(&mut self) {
        let files = self.files.get_mut().expect("sent log lock");
        for c in files.values() {
            let _ = std::fs::remove_file(&c.path);
        }
    }
}

/// What a dead holder's file says it sent, if the file is there and the holder
/// that wrote it is dead on this host (see [`super::gone_here`]); the file is
/// removed once read. `None`: count the reservation whole.
pub fn sent_by_dead(worker: &str, path: &str) -> Option<i64> {
    let sent = peek(worker, path)?;
    let _ = std::fs::remove_file(path);
    Some(sent)
}

/// [`sent_by_dead`] without removing the file (for `status` and `estimate`).
pub fn peek(worker: &str, path: &str) -> Option<i64> {
    let path = Path::new(path);
    // Only files of this host's directory: the path comes from the database.
    if path.parent() != Some(dir().as_path()) {
        return None;
    }
    // A file another user could have written is not trusted: counted whole.
    let meta = std::fs::symlink_metadata(path).ok()?;
    let own = std::fs::metadata("/proc/self").ok()?.uid();
    if !meta.is_file() || meta.uid() != own || meta.mode() & 0o022 != 0 {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let count = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let made = std::str::from_utf8(bytes.get(8..)?).ok()?;
    super::gone_here(worker, made).then_some(count)
}

/// Enough to keep two stores of one process (tests) apart.
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_reads_back_only_when_its_writer_is_gone() {
        let log = SentLog::new(&super::super::lock::this_process());
        let path = log.path("2026-11-01").unwrap();
        assert_eq!(log.path("2026-11-01").unwrap(), path, "one file a period");
        log.add("2026-11-01", 5);
        log.add("2026-11-01", -1);
        log.add("2026-12-01", 3); // no file for it: nothing written
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(i64::from_le_bytes(bytes[..8].try_into().unwrap()), 4);
        // This process is alive: its count is not to be trusted yet.
        assert_eq!(
            sent_by_dead(&super::super::lock::this_process(), &path),
            None
        );
        // A holder of this host whose pid is gone: its count is what it sent.
        let dead = format!("{}:{}", super::super::lock::host_name(), u32::MAX - 7);
        assert_eq!(sent_by_dead(&dead, &path), Some(4));
        assert!(!Path::new(&path).exists(), "read once, then removed");
        // Not a file of this host's directory: counted whole.
        assert_eq!(sent_by_dead(&dead, "/etc/passwd"), None);
    }

    #[test]
    fn a_count_another_user_could_have_written_is_not_trusted() {
        use std::os::unix::fs::PermissionsExt;
        let log = SentLog::new("host:2");
        let path = log.path("2026-11-01").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "made for this user alone");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let dead = format!("{}:{}", super::super::lock::host_name(), u32::MAX - 7);
        assert_eq!(sent_by_dead(&dead, &path), None);
    }

    #[test]
    fn a_holder_that_leaves_removes_its_files() {
        let log = SentLog::new("host:1");
        let path = log.path("2026-11-01").unwrap();
        assert!(Path::new(&path).exists());
        drop(log);
        assert!(!Path::new(&path).exists());
    }
}
