//! PostgreSQL sessions: the limits every connection of freshen's runs under
//! (`database.lock_timeout`, `database.statement_timeout`), the name it goes by
//! in `pg_stat_activity` (`freshen host:pid`), and what freshen says when another
//! session's lock stops it: who holds the lock, since when, doing what.
//!
//! Without the limits, another session's `LOCK TABLE` (a migration, a `VACUUM
//! FULL`, a transaction left open in psql) would stall a run silently, and a
//! SIGTERM would wait for it: a statement blocked on a lock is cancelled at
//! once when the run stops (see [`Store::cancel_lock_waits`]).

use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::{AnyConnection, Row};

use super::Store;

/// What each connection is set up with.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    /// `freshen host:pid`: this process's sessions, to itself and to an operator.
    pub application_name: String,
    pub lock_timeout: Duration,
    pub statement_timeout: Duration,
}

impl Settings {
    pub fn new(config: &crate::config::Config) -> Settings {
        Settings {
            application_name: format!("freshen {}", super::this_process()),
            lock_timeout: config.lock_timeout,
            statement_timeout: config.statement_timeout,
        }
    }
}

/// The server's unit is milliseconds, at most `i32::MAX` (about 24 days).
fn millis(d: Duration) -> String {
    d.as_millis().min(i32::MAX as u128).to_string()
}

/// Applies `settings` to a new connection (the pool's `after_connect`).
pub(super) async fn setup(conn: &mut AnyConnection, settings: &Settings) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT set_config('application_name', $1, false), set_config('lock_timeout', $2, false), \
         set_config('statement_timeout', $3, false)",
    )
    .bind(settings.application_name.clone())
    .bind(millis(settings.lock_timeout))
    .bind(millis(settings.statement_timeout))
    .fetch_one(&mut *conn)
    .await?;
    Ok(())
}

/// SQLSTATE 55P03 (`lock_not_available`: `lock_timeout`) and 57014
/// (`query_canceled`: `statement_timeout`, or [`Store::cancel_lock_waits`]).
fn timed_out(e: &anyhow::Error) -> Option<&'static str> {
    e.chain()
        .find_map(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => match db.code().as_deref() {
                Some("55P03") => Some("lock"),
                Some("57014") => Some("statement"),
                _ => None,
            },
            _ => None,
        })
}

/// Sessions that hold a lock on the table or on freshen's own tables, strongest
/// lock first: the likely blockers.
const HOLDERS: &str = "SELECT a.pid, COALESCE(a.application_name, ''), \
     COALESCE(CAST(a.xact_start AS TEXT), ''), COALESCE(CAST(a.query_start AS TEXT), ''), \
     COALESCE(a.state, ''), c.relname::text, l.mode \
     FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
     JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.granted AND l.locktype = 'relation' \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND (c.relname = $1 OR c.relname LIKE 'freshen\\_%') \
     AND a.pid <> pg_backend_pid() AND COALESCE(a.application_name, '') <> $2 \
     ORDER BY CASE l.mode WHEN 'AccessExclusiveLock' THEN 0 WHEN 'ExclusiveLock' THEN 1 \
     WHEN 'ShareRowExclusiveLock' THEN 2 WHEN 'ShareLock' THEN 3 ELSE 4 END, a.xact_start \
     LIMIT 3";

impl Store {
    /// Cancels this process's statements that have waited two seconds or more for
    /// a lock (a run stopping:
    /// its last checkpoint cannot be written while another session holds the
    /// table, and a SIGTERM must not wait for that session). The number cancelled.
    pub async fn cancel_lock_waits(&self) -> Result<u64> {
        let Some(settings) = &self.session else {
            return Ok(0);
        };
        let rows = sqlx::query(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND wait_event_type = 'Lock' AND pid <> pg_backend_pid() \
             AND query_start < clock_timestamp() - interval '2 seconds'",
        )
        .bind(settings.application_name.clone())
        .fetch_all(&self.pool)
        .await
        .context("cancelling statements that wait for a lock")?;
        Ok(rows.len() as u64)
    }

    /// `e` with what the database can say about it, when it is a statement that
    /// ran out of `database.lock_timeout` or `database.statement_timeout` (or was
    /// cancelled as the run stopped): which sessions hold locks on the table.
    pub async fn explain_timeout(&self, e: anyhow::Error) -> anyhow::Error {
        let (Some(settings), Some(what)) = (&self.session, timed_out(&e)) else {
            return e;
        };
        let key = match what {
            "lock" => format!(
                "a statement waited longer than database.lock_timeout ({}) for a lock",
                humantime::format_duration(settings.lock_timeout)
            ),
            _ => format!(
                "a statement ran longer than database.statement_timeout ({}), or waited for a \
                 lock as the run stopped, and was cancelled",
                humantime::format_duration(settings.statement_timeout)
            ),
        };
        let holders = match self.lock_holders(settings).await {
            Ok(h) if !h.is_empty() => format!(
                "; held by {}. End that session (SELECT pg_terminate_backend(pid)) or let it \
                 finish, then rerun: the run resumes",
                h.join("; ")
            ),
            Ok(_) => "; no other session holds a lock on the table now: rerun to resume".into(),
            Err(err) => format!("; who held it cannot be read ({err:#})"),
        };
        e.context(format!(
            "{key} on table `{}` or freshen's tables{holders}",
            self.table
        ))
    }

    async fn lock_holders(&self, settings: &Settings) -> Result<Vec<String>> {
        // The catalogs it reads are not what another session's LOCK TABLE holds.
        let rows = sqlx::query(HOLDERS)
            .bind(self.table.clone())
            .bind(settings.application_name.clone())
            .fetch_all(&self.pool)
            .await;
        rows?
            .iter()
            .map(|r| {
                let (pid, app, xact, query, state, rel, mode): (
                    i32,
                    String,
                    String,
                    String,
                    String,
                    String,
                    String,
                ) = (
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                    r.try_get(5)?,
                    r.try_get(6)?,
                );
                let app = if app.is_empty() { "(none)".into() } else { app };
                Ok(format!(
                    "pid {pid} (application_name `{app}`, {state}, transaction since {xact}, \
                     last query started {query}) holds {mode} on {rel}"
                ))
            })
            .collect()
    }
}
