//! The table's run lock: one run at a time per table (the workers of a joined
//! run share it under one holder name).
//!
//! Two layers. A lock that dies with its holder, kept by the operating system or
//! the database server: on SQLite an OS file lock on a file beside the database
//! (`<database>.<table>.lock`, released by the kernel when the process ends,
//! however it ends), on PostgreSQL a session advisory lock on a connection of its
//! own (released by the server when that connection closes), exclusive for a
//! solo run and shared among the workers of a joined run. And the row in
//! `freshen_locks`, which names the holder and carries its heartbeat, for
//! messages and `freshen status`.
//!
//! Whoever gets the lower layer alone takes the row whatever it says: its
//! holder is dead (a SIGKILL, a second Ctrl-C). The row's `lock.stale_after`
//! takeover stays for a holder the lower layer says may be alive: suspended
//! (SIGSTOP), or cut off from the database on another host. A run that took the
//! row that way takes the lower layer too as soon as the old holder lets go.

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Row};

use super::ledger::now_ms;
use super::{Backend, Store, now_stamp};

/// Who holds a table's run lock.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockHolder {
    pub holder: String,
    pub acquired_at: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_s: i64,
    /// Whether the holder may be at work: its heartbeat is fresher than
    /// `lock.stale_after`, and neither the lower layer nor this host's process
    /// table says it is gone.
    pub live: bool,
}

/// The lower layer, while this process holds it.
pub(super) enum Guard {
    File(std::fs::File),
    Session(AnyConnection),
}

/// How a run holds its table's lock: alone, or shared among the workers of a
/// joined run (`--join`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LockMode {
    #[default]
    Exclusive,
    Shared,
}

impl LockMode {
    /// The mode of a run started with `--join` (`join`) or not.
    pub fn of(join: bool) -> LockMode {
        if join {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        }
    }
}

/// The lower layer as this process holds it (or not), and in which mode.
#[derive(Default)]
pub(super) struct OsLock {
    guard: Option<Guard>,
    mode: LockMode,
}

/// What taking the lower layer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// Taken just now, and held by this process alone: any other holder is dead.
    Sole,
    /// Held by this process since before: the row's own rule (free, stale, or
    /// this holder's) decides.
    Kept,
    /// Held shared with other live processes (the workers of a joined run).
    Shared,
    /// Held by another live process.
    Busy,
    /// Not to be had (an in-memory database, a directory freshen cannot write):
    /// the row alone decides, with this host's process table.
    Unavailable,
}

/// The advisory lock's key: two int4s, a space of freshen's own and the table.
const SPACE: &str = "freshen run lock";

/// Takes a free lock, a stale one (a heartbeat older than `$4` ms), the
/// holder's own (the workers of a joined run share one holder name) or one held
/// by a process known dead (`$5`). Heartbeats are stamped and aged on the
/// database's clock, as the ledger's are, so hosts' clocks need not agree.
fn take(backend: Backend) -> String {
    let now = now_ms(backend);
    format!(
        "INSERT INTO freshen_locks (name, holder, acquired_at, heartbeat_at) \
         VALUES ($1, $2, $3, {now}) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
         acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at \
         WHERE freshen_locks.heartbeat_at < {now} - $4 OR freshen_locks.holder = excluded.holder \
         OR freshen_locks.holder = $5"
    )
}

/// While another live process holds the lower layer: only a row that exists and
/// is stale (or the holder's own) is taken; a missing row is being written by
/// that process just now.
fn take_over(backend: Backend) -> String {
    let now = now_ms(backend);
    format!(
        "UPDATE freshen_locks SET holder = $2, acquired_at = $3, heartbeat_at = {now} \
         WHERE name = $1 AND (heartbeat_at < {now} - $4 OR holder = $2 OR holder = $5)"
    )
}

/// A heartbeat age every heartbeat is older than: the lock is this process's
/// alone (it holds the lower layer), whatever the row says.
const ANY_AGE: i64 = -1_000_000_000_000_000;

impl Store {
    /// Takes the table's run lock for `holder` (`LockMode::Shared` for a joined run's
    /// workers), or reports who holds it. A dead holder's lock is taken at once;
    /// one whose holder may be alive, once its heartbeat is older than `stale_after`.
    pub async fn lock(
        &self,
        holder: &str,
        stale_after: Duration,
        mode: LockMode,
    ) -> Result<Result<(), LockHolder>> {
        let layer = self.take_layer(mode).await;
        let stale = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let (take, take_over) = (take(self.backend), take_over(self.backend));
        let (sql, stale, dead) = match layer {
            Layer::Sole => (&take, ANY_AGE, String::new()),
            Layer::Shared | Layer::Kept => (&take, stale, String::new()),
            Layer::Busy => (&take_over, stale, String::new()),
            Layer::Unavailable => {
                let dead = match self.lock_row().await? {
                    Some((other, acquired_at, _)) if gone_here(&other, &acquired_at) => other,
                    _ => String::new(),
                };
                (&take, stale, dead)
            }
        };
        let taken = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(self.table.clone())
            .bind(holder.to_owned())
            .bind(now_stamp())
            .bind(stale)
            .bind(dead)
            .execute(&self.pool)
            .await
            .context("taking the run lock")?
            .rows_affected();
        if taken == 1 {
            return Ok(Ok(()));
        }
        if layer == Layer::Shared {
            // Shared with the workers of another joined run: leave it to them.
            self.release().await;
        }
        Ok(Err(self.lock_holder(stale_after).await?.unwrap_or(
            LockHolder {
                holder: "(another run, taking it just now)".into(),
                acquired_at: String::new(),
                heartbeat_age_s: 0,
                live: true,
            },
        )))
    }

    /// The lock's holder, if any, and whether it may be alive.
    pub async fn lock_holder(&self, stale_after: Duration) -> Result<Option<LockHolder>> {
        let Some((holder, acquired_at, age_ms)) = self.lock_row().await? else {
            return Ok(None);
        };
        let fresh = u128::try_from(age_ms).unwrap_or(0) < stale_after.as_millis();
        let live = fresh
            && !gone_here(&holder, &acquired_at)
            && match self.backend {
                // Read-only: the advisory lock is held by some session or it is not.
                Backend::Postgres => {
                    let mut conn = self.pool.acquire().await?;
                    others_holding(&mut conn, &self.table).await? > 0
                }
                // Probing the file lock would lock out a run starting at that
                // instant: this host's process table says enough.
                Backend::Sqlite => true,
            };
        Ok(Some(LockHolder {
            holder,
            acquired_at,
            heartbeat_age_s: age_ms / 1000,
            live,
        }))
    }

    /// Refreshes the heartbeat, and takes the lower layer again if this process
    /// does not hold it (the lock was taken over from a suspended holder that has
    /// let go since, or the server dropped the lock's session); false if the lock
    /// is no longer this holder's.
    pub async fn heartbeat(&self, holder: &str) -> Result<bool> {
        let now = now_ms(self.backend);
        let kept = sqlx::query(AssertSqlSafe(format!(
            "UPDATE freshen_locks SET heartbeat_at = {now} WHERE name = $1 AND holder = $2"
        )))
        .bind(self.table.clone())
        .bind(holder.to_owned())
        .execute(&self.pool)
        .await?;
        if kept.rows_affected() == 1 {
            let mode = self.os_lock.lock().await.mode;
            self.take_layer(mode).await;
        }
        Ok(kept.rows_affected() == 1)
    }

    /// Releases the lock held by `holder`: its row, then the lower layer.
    pub async fn unlock(&self, holder: &str) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM freshen_locks WHERE name = $1 AND holder = $2")
            .bind(self.table.clone())
            .bind(holder.to_owned())
            .execute(&self.pool)
            .await
            .context("releasing the run lock");
        self.release().await;
        deleted.map(|_| ())
    }

    /// Lets go of the lower layer (the row stays: see [`Store::unlock`]).
    pub async fn release(&self) {
        let guard = self.os_lock.lock().await.guard.take();
        match guard {
            Some(Guard::Session(conn)) => {
                let _ = conn.close().await;
            }
            // Closing the file releases its lock.
            Some(Guard::File(file)) => drop(file),
            None => {}
        }
    }

    /// The lock's holder, when it took the lock, and its heartbeat's age in ms.
    async fn lock_row(&self) -> Result<Option<(String, String, i64)>> {
        let now = now_ms(self.backend);
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT holder, acquired_at, CAST({now} - heartbeat_at AS BIGINT) \
             FROM freshen_locks WHERE name = $1"
        )))
        .bind(self.table.clone())
        .fetch_optional(&self.pool)
        .await
        .context("reading the run lock")?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()
    }

    /// Takes (or keeps) the lower layer. Never fails: what cannot be had is
    /// [`Layer::Unavailable`], and the row decides alone.
    async fn take_layer(&self, mode: LockMode) -> Layer {
        let mut os = self.os_lock.lock().await;
        os.mode = mode;
        // A session the server dropped (a restart, pg_terminate_backend) holds
        // nothing any more: take it again, or learn that another run has.
        if let Some(Guard::Session(conn)) = &mut os.guard
            && conn.ping().await.is_err()
        {
            tracing::warn!("the run lock's database session was lost: taking the lock again");
            os.guard = None;
        }
        if os.guard.is_some() {
            // Held from before: the row may have been taken over meanwhile (this
            // process was suspended past lock.stale_after). Only a lock taken
            // just now proves its last holder dead.
            return Layer::Kept;
        }
        match self.new_guard(mode).await {
            Ok(Some(guard)) => os.guard = Some(guard),
            Ok(None) => return Layer::Busy,
            Err(e) => {
                tracing::debug!("no lock that dies with its holder: {e:#}");
                return Layer::Unavailable;
            }
        }
        if mode == LockMode::Exclusive {
            return Layer::Sole;
        }
        let others = match &mut os.guard {
            Some(Guard::Session(conn)) => others_holding(conn, &self.table).await,
            _ => Ok(0),
        };
        match others {
            Ok(0) => Layer::Sole,
            Ok(_) => Layer::Shared,
            Err(e) => {
                // The connection broke: let it go, and the row decides.
                tracing::debug!("the run lock's connection: {e:#}");
                os.guard = None;
                Layer::Unavailable
            }
        }
    }

    /// The lower layer, taken without waiting: `None` if another process holds it.
    async fn new_guard(&self, mode: LockMode) -> Result<Option<Guard>> {
        match self.backend {
            Backend::Sqlite => {
                let Some((db, _)) = &self.sqlite_file else {
                    anyhow::bail!("an in-memory database has no file to lock beside it");
                };
                let path = lock_file(db, &self.table);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(Guard::File(file))),
                    Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                    Err(std::fs::TryLockError::Error(e)) => {
                        Err(anyhow::Error::new(e).context(format!("locking {}", path.display())))
                    }
                }
            }
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await?.detach();
                let sql = if mode == LockMode::Shared {
                    "SELECT pg_try_advisory_lock_shared(hashtext($1), hashtext($2))"
                } else {
                    "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))"
                };
                let got: bool = sqlx::query(sql)
                    .bind(SPACE)
                    .bind(self.table.clone())
                    .fetch_one(&mut conn)
                    .await?
                    .try_get(0)?;
                if got {
                    Ok(Some(Guard::Session(conn)))
                } else {
                    let _ = conn.close().await;
                    Ok(None)
                }
            }
        }
    }
}

/// Sessions other than this connection's that hold the table's advisory lock.
async fn others_holding(conn: &mut AnyConnection, table: &str) -> Result<i64> {
    let n = sqlx::query(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 2 AND classid = CAST(hashtext($1) AS oid) \
         AND objid = CAST(hashtext($2) AS oid) \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND pid <> pg_backend_pid()",
    )
    .bind(SPACE)
    .bind(table.to_owned())
    .fetch_one(conn)
    .await
    .context("reading who holds the run lock")?
    .try_get(0)?;
    Ok(n)
}

/// The file beside the database whose OS lock is the table's run lock. Never
/// removed: removing a lock file lets two processes lock two different files.
pub fn lock_file(db: &std::path::Path, table: &str) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(format!(".{table}.lock"));
    name.into()
}

/// SQLite: an OS lock on `<database>.migrate.lock`, held while freshen's
/// migrations are applied, so that processes opening a fresh database at once
/// take turns (the first creates the tables, the others find them). `None` for
/// an in-memory database.
pub(super) async fn migrations_lock(url: &str) -> Result<Option<std::fs::File>> {
    use std::str::FromStr;
    let Ok(options) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        return Ok(None);
    };
    let db = options.get_filename();
    if db.as_os_str().is_empty() || db.as_os_str() == ":memory:" {
        return Ok(None);
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".migrate.lock");
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {} to apply freshen's migrations", path.display()))?;
    // Migrations take milliseconds; a minute means a process stuck holding it.
    for _ in 0..600 {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e).context(format!("locking {}", path.display())));
            }
        }
    }
    anyhow::bail!(
        "another process has held {} for a minute while applying freshen's migrations; \
         if it is stuck, end it and rerun",
        path.display()
    )
}

/// This process as a lock's holder: `host:pid`.
pub fn this_process() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether `holder` (`host:pid`) names a process of this host that is gone: no
/// such pid, or the pid reused by a process that started after the lock was
/// taken (`acquired_at`). False when it cannot tell (another host, a joined
/// run's shared name, no `/proc`).
pub fn gone_here(holder: &str, acquired_at: &str) -> bool {
    let Some((host, pid)) = holder.rsplit_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != host_name() || !std::path::Path::new("/proc/self/stat").exists() {
        return false;
    }
    let Some(started) = process_start(pid) else {
        return true;
    };
    // A second of slack: the start time is in clock ticks, the stamp in ms.
    acquired_at
        .parse::<jiff::Timestamp>()
        .is_ok_and(|at| started > at.as_second() + 1)
}

/// When process `pid` started, in Unix seconds; `None` if there is no such process.
fn process_start(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from
    // its closing one. The start time is field 22, in clock ticks since boot.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: i64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // USER_HZ, which /proc reports in, is 100 on every Linux architecture.
    Some(boot + ticks / 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_not_gone_and_a_missing_pid_is() {
        let me = this_process();
        let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
        // Started before the lock it took.
        assert!(!gone_here(&me, &jiff::Timestamp::now().to_string()));
        // A lock taken an hour before this process started: its pid was reused.
        assert!(gone_here(&me, &an_hour_ago.to_string()));
        // pid_max is at most 2^22.
        assert!(gone_here(
            &format!("{}:{}", host_name(), 1 << 23),
            &an_hour_ago.to_string()
        ));
        // Another host, or a joined run's name: cannot tell.
        assert!(!gone_here("elsewhere.invalid:1", &an_hour_ago.to_string()));
        assert!(!gone_here(
            "the workers of `run --join` {}",
            &an_hour_ago.to_string()
        ));
    }
}
