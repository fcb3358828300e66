//! The credit ledger in the database, one for every process that spends from a
//! period: solo runs, the workers of joined runs, runs of other tables.
//!
//! A process registers in `freshen_workers` and keeps its heartbeat fresh on
//! the database's clock. Before it sends calls it is granted credits, a few
//! calls' worth at a time, into its row of `freshen_reservations`; the
//! checkpoint that charges a billed answer moves the charge from the
//! reservation to the period's `spent` in the same transaction; what is unused
//! goes back when the process idles or leaves. Every grant sees every other
//! holder's reservation, so no two processes can spend the same credit.
//!
//! A holder whose heartbeat goes stale (killed, suspended, cut off) is dead for
//! good: its heartbeat is refused from then on (it must stop calling), and the
//! next grant moves its reservation into `spent` and `uncertain`, since the
//! vendor may have billed the calls it had out. A holder dead on this host is
//! settled exactly from its sent log (`store::sent`): what it sent and had not
//! charged is spent, what it held unsent goes back. One on another host, or
//! suspended, is counted whole: a crash can so waste at most the unused part of
//! one grant; it can never spend past the allowance.
//!
//! Lock order, everywhere: the period's row, then the holder's row in
//! `freshen_workers` (where a transaction touches it), then reservations.
//! Taken the other way round, a grant and a leave of the same holder deadlock
//! on PostgreSQL; and a grant that held its holder's row while it waited for
//! the period (behind a suspended process's transaction) would keep the
//! holder's own heartbeat from being written until it went stale. The first
//! statement of each transaction is a write, which on SQLite takes the
//! database's write lock before anything is read; the period's row is written
//! before its figures are read, which on PostgreSQL locks the row, so each
//! later statement (read committed) sees every grant and charge committed
//! before it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::future::BoxFuture;
use sqlx::{Any, Row};

use super::sent::{SentLog, peek, sent_by_dead};
use super::{Backend, Store, millis};
use crate::credits::{Funds, Grant, GrantSource, RunCap};

/// The database clock in Unix milliseconds, as SQL text for the backend.
pub(super) fn now_ms(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        Backend::Postgres => now_ms!(),
    }
}

/// The ledger's statements whose text depends on the backend (its clock).
pub(super) struct Sql {
    register: String,
    heartbeat: String,
    reap: String,
    /// Credits dead holders still hold reserved in a period.
    dead: String,
}

impl Sql {
    pub fn new(backend: Backend) -> Sql {
        let now = now_ms(backend);
        Sql {
            register: format!(
                "INSERT INTO freshen_workers (worker, run_id, started_at, heartbeat_at) \
                 VALUES ($1, $2, $3, {now})"
            ),
            // Only a fresh heartbeat can be refreshed: once stale, a holder is
            // dead for good, and its claims and reservations are another's to take.
            heartbeat: format!(
                "UPDATE freshen_workers SET heartbeat_at = {now} \
                 WHERE worker = $1 AND heartbeat_at >= {now} - $2"
            ),
            dead: format!(
                "SELECT holder, reserved, charged, sent_log FROM freshen_reservations \
                 WHERE period = $1 AND NOT EXISTS (SELECT 1 FROM freshen_workers w \
                 WHERE w.worker = freshen_reservations.holder AND w.heartbeat_at >= {now} - $2)"
            ),
            reap: format!(
                "DELETE FROM freshen_reservations WHERE period = $1 AND NOT EXISTS \
                 (SELECT 1 FROM freshen_workers w WHERE w.worker = freshen_reservations.holder \
                  AND w.heartbeat_at >= {now} - $2) RETURNING holder, reserved, charged, sent_log, run_id"
            ),
        }
    }
}

/// A process spending from the ledger, and the bounds on what it may ask for.
#[derive(Debug, Clone)]
pub struct Holder {
    /// Its name in `freshen_workers` (`host:pid`).
    pub worker: String,
    pub run: i64,
    /// The allowance of a period whose row does not exist yet (a new period).
    pub allowance: i64,
    pub reserve: i64,
    /// Grants are whole multiples of this: a call's cost, so that no process
    /// holds credits it cannot make a call with.
    pub grant_unit: i64,
    /// `--max-credits`: the run's spent and reservations may not pass it.
    pub run_limit: Option<i64>,
    pub stale_after: Duration,
}

/// A [`Holder`]'s account with the ledger: where its [`crate::credits::Budget`]
/// gets its credits.
pub struct Account {
    store: Arc<Store>,
    log: SentLog,
    holder: Holder,
    /// The period whose row is known to exist.
    known: std::sync::Mutex<String>,
}

impl Account {
    pub fn new(store: Arc<Store>, holder: Holder) -> Account {
        Account {
            store,
            log: SentLog::new(&holder.worker),
            holder,
            known: std::sync::Mutex::new(String::new()),
        }
    }
}

impl GrantSource for Account {
    fn grant<'a>(&'a self, period: &'a str, want: i64) -> BoxFuture<'a, Result<Grant>> {
        Box::pin(async move {
            let known = *self.known.lock().expect("period lock") == period;
            if !known {
                self.store
                    .ensure_period(period, self.holder.allowance)
                    .await?;
                *self.known.lock().expect("period lock") = period.to_owned();
            }
            // The file that counts what is sent exists before any credit
            // of the period is granted; without it the grant is counted whole
            // after a crash, as it is on another host.
            let log = match self.log.path(period) {
                Ok(path) => Some(path),
                Err(e) => {
                    tracing::warn!("{e:#}; a crash will count this run's reservation whole");
                    None
                }
            };
            self.store.grant(&self.holder, period, want, log).await
        })
    }

    fn sent(&self, period: &str, credits: i64) {
        self.log.add(period, credits);
    }

    fn give_back<'a>(&'a self, period: &'a str, credits: i64) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.store.give_back(&self.holder.worker, period, credits))
    }
}

impl Store {
    /// Enters this process as a holder (a run alone, or one worker of a joined
    /// run), with a fresh heartbeat. A row of the same name is an earlier
    /// process with this host and pid, so dead: it is removed, and its
    /// reservations count as spent (the next grant moves them there).
    pub async fn register(&self, run: i64, worker: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.context("registering the run")?;
        lock_holders_periods(&mut tx, worker).await?;
        sqlx::query("DELETE FROM freshen_workers WHERE worker = $1")
            .bind(worker.to_owned())
            .execute(&mut *tx)
            .await
            .context("registering the run")?;
        // An earlier process of this name (a container's pid 1 restarted, say)
        // may have died holding credits: they become spent, as the next grant
        // would have made them, before the name is taken again.
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT period FROM freshen_reservations WHERE holder = $1 ORDER BY period",
        )
        .bind(worker.to_owned())
        .fetch_all(&mut *tx)
        .await
        .context("registering the run")?;
        for period in held {
            let rows = sqlx::query(
                "DELETE FROM freshen_reservations WHERE holder = $1 AND period = $2 \
                 RETURNING holder, reserved, charged, sent_log, run_id",
            )
            .bind(worker.to_owned())
            .bind(period.clone())
            .fetch_all(&mut *tx)
            .await
            .context("registering the run")?;
            count_as_spent(&mut tx, &period, &rows).await?;
        }
        sqlx::query(sqlx::AssertSqlSafe(self.ledger.register.clone()))
            .bind(worker.to_owned())
            .bind(run)
            .bind(super::now_stamp())
            .execute(&mut *tx)
            .await
            .context("registering the run")?;
        tx.commit().await.context("registering the run")
    }

    /// Marks dead at once the registered processes of this host that are gone
    /// (no such pid, or the pid reused since): their reservations then count as
    /// spent at the next grant, without waiting out `lock.stale_after`.
    pub async fn expire_gone_here(&self) -> Result<()> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT worker, started_at FROM freshen_workers WHERE heartbeat_at > 0")
                .fetch_all(&self.pool)
                .await
                .context("reading the registered runs")?;
        for (worker, started_at) in rows {
            if super::gone_here(&worker, &started_at) {
                sqlx::query("UPDATE freshen_workers SET heartbeat_at = 0 WHERE worker = $1")
                    .bind(worker)
                    .execute(&self.pool)
                    .await
                    .context("marking a dead run")?;
            }
        }
        Ok(())
    }

    /// Refreshes the holder's heartbeat. False if it had gone stale (or its row
    /// is gone): the holder is fenced and must stop calling.
    pub async fn lease_heartbeat(&self, worker: &str, stale_after: Duration) -> Result<bool> {
        let kept = sqlx::query(sqlx::AssertSqlSafe(self.ledger.heartbeat.clone()))
            .bind(worker.to_owned())
            .bind(millis(stale_after))
            .execute(&self.pool)
            .await
            .context("refreshing the run's heartbeat")?;
        Ok(kept.rows_affected() == 1)
    }

    /// Grants the holder up to `want` credits (whole calls' worth) of what the
    /// period has left, by [`Funds::room`]. One transaction, serialized on the
    /// period's row with every other grant and charge. Dead holders'
    /// reservations are moved into `spent` first.
    /// The period's row must exist ([`Account`] makes sure of it).
    pub async fn grant(
        &self,
        req: &Holder,
        period: &str,
        want: i64,
        sent_log: Option<String>,
    ) -> Result<Grant> {
        let mut tx = self.pool.begin().await.context("asking for credits")?;
        // The period's row first: waiting for it (behind a suspended process's
        // grant, say) holds nothing, so this process's own heartbeat, which
        // writes its row, never waits behind its own grant.
        lock_period(&mut tx, period).await?;
        self.reap(&mut tx, period, req.stale_after).await?;
        let fenced = sqlx::query(sqlx::AssertSqlSafe(self.ledger.heartbeat.clone()))
            .bind(req.worker.clone())
            .bind(millis(req.stale_after))
            .execute(&mut *tx)
            .await
            .context("asking for credits")?
            .rows_affected()
            == 0;
        let (funds, others) = read_funds(&mut tx, period, req.reserve, Some(req)).await?;
        let (room, limit) = funds.room();
        let cost = req.grant_unit.max(1);
        let granted = if fenced {
            0
        } else {
            (want.min(room).max(0) / cost) * cost
        };
        if granted > 0 {
            sqlx::query(
                "INSERT INTO freshen_reservations (holder, period, run_id, reserved, sent_log) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (holder, period) \
                 DO UPDATE SET reserved = freshen_reservations.reserved + excluded.reserved, \
                 sent_log = excluded.sent_log",
            )
            .bind(req.worker.clone())
            .bind(period.to_owned())
            .bind(req.run)
            .bind(granted)
            .bind(sent_log)
            .execute(&mut *tx)
            .await
            .context("reserving credits")?;
        }
        tx.commit().await.context("reserving credits")?;
        Ok(Grant {
            granted,
            others,
            limit,
            fenced,
        })
    }

    /// Gives `credits` of the holder's reservation in `period` back, unused.
    pub async fn give_back(&self, worker: &str, period: &str, credits: i64) -> Result<()> {
        if credits <= 0 {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.context("giving credits back")?;
        lock_period(&mut tx, period).await?;
        sqlx::query(
            "UPDATE freshen_reservations SET reserved = \
             CASE WHEN reserved > $1 THEN reserved - $1 ELSE 0 END \
             WHERE holder = $2 AND period = $3",
        )
        .bind(credits)
        .bind(worker.to_owned())
        .bind(period.to_owned())
        .execute(&mut *tx)
        .await
        .context("giving credits back")?;
        tx.commit().await.context("giving credits back")
    }

    /// The holder leaves: its reservations, all unused now that every answer is
    /// checkpointed, go back, and its row goes. (After a failure, what it still
    /// holds is moved to spent by the next grant instead: see [`Store::grant`].)
    pub async fn leave(&self, worker: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.context("leaving the ledger")?;
        lock_holders_periods(&mut tx, worker).await?;
        sqlx::query("DELETE FROM freshen_workers WHERE worker = $1")
            .bind(worker.to_owned())
            .execute(&mut *tx)
            .await
            .context("leaving the ledger")?;
        // A grant of this holder still in flight waits for its row, finds it
        // gone and grants nothing; it never holds what this waits for.
        sqlx::query("DELETE FROM freshen_reservations WHERE holder = $1")
            .bind(worker.to_owned())
            .execute(&mut *tx)
            .await
            .context("leaving the ledger")?;
        tx.commit().await.context("leaving the ledger")
    }

    /// The period's figures as every grant sees them, for `status` and
    /// `estimate` (reads only). What dead holders (heartbeat older than
    /// `stale_after`, or gone from this host) still hold reserved is shown as
    /// the next grant will count it: as spent and uncertain, what they sent and
    /// had not charged (all of it for a holder of another host), and the rest as
    /// free.
    pub async fn funds(
        &self,
        period: &str,
        allowance: i64,
        reserve: i64,
        stale_after: Duration,
    ) -> Result<Funds> {
        self.ensure_period(period, allowance).await?;
        self.expire_gone_here().await?;
        let mut conn = self.pool.acquire().await.context("reading the credits")?;
        let (mut funds, _) = read_funds(&mut conn, period, reserve, None).await?;
        let dead = sqlx::query(sqlx::AssertSqlSafe(self.ledger.dead.clone()))
            .bind(period.to_owned())
            .bind(millis(stale_after))
            .fetch_all(&mut *conn)
            .await
            .context("reading dead runs' reservations")?;
        for row in dead {
            let reserved: i64 = row.try_get(1)?;
            let counted = counted(&row, peek)?;
            funds.reserved -= reserved;
            funds.spent += counted;
            funds.uncertain += counted;
        }
        Ok(funds)
    }

    async fn ensure_period(&self, period: &str, allowance: i64) -> Result<()> {
        super::query(&self.sql.ensure_period)
            .bind(period.to_owned())
            .bind(allowance)
            .execute(&self.pool)
            .await
            .context("creating the credit period")?;
        Ok(())
    }

    /// Moves dead holders' reservations in `period` into its spent (and
    /// uncertain), and into their runs' spent, so `--max-credits` counts them.
    async fn reap(
        &self,
        tx: &mut sqlx::Transaction<'_, Any>,
        period: &str,
        stale_after: Duration,
    ) -> Result<()> {
        let dead = sqlx::query(sqlx::AssertSqlSafe(self.ledger.reap.clone()))
            .bind(period.to_owned())
            .bind(millis(stale_after))
            .fetch_all(&mut **tx)
            .await
            .context("reading dead runs' reservations")?;
        count_as_spent(tx, period, &dead).await
    }
}

/// Counts reservations of dead holders (rows of holder, reserved, charged, sent
/// log and run) as spent in `period`, as uncertain, and in their runs' spent,
/// so `--max-credits` counts them. A holder dead on this host whose sent log is
/// there is settled exactly: what it sent and had not charged counts (the
/// vendor may have billed it), what it held unsent goes back to the period.
async fn count_as_spent(
    tx: &mut sqlx::Transaction<'_, Any>,
    period: &str,
    rows: &[sqlx::any::AnyRow],
) -> Result<()> {
    for row in rows {
        let (run, reserved): (i64, i64) = (row.try_get(4)?, row.try_get(1)?);
        let credits = counted(row, sent_by_dead)?;
        if credits < reserved {
            tracing::info!(
                "{} credits a run that died (run {run}) held unsent go back to the period",
                reserved - credits
            );
        }
        if credits == 0 {
            continue;
        }
        tracing::info!(
            "{credits} credits reserved by a run that died (run {run}) count as spent: \
             the vendor may have billed the calls it had out"
        );
        sqlx::query(
            "UPDATE freshen_credit_periods SET spent = spent + $1, uncertain = uncertain + $1 \
             WHERE period = $2",
        )
        .bind(credits)
        .bind(period.to_owned())
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE freshen_runs SET credits_spent = credits_spent + $1 WHERE id = $2")
            .bind(credits)
            .bind(run)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// What a dead holder's reservation (a row of holder, reserved, charged and
/// sent log) counts as spent: on this host, what its sent log says it sent and
/// had not charged; otherwise the whole of it.
fn counted(row: &sqlx::any::AnyRow, sent: fn(&str, &str) -> Option<i64>) -> Result<i64> {
    let (holder, reserved): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
    let (charged, log): (i64, Option<String>) = (row.try_get(2)?, row.try_get(3)?);
    Ok(match log.and_then(|path| sent(&holder, &path)) {
        Some(sent) => (sent - charged).clamp(0, reserved),
        None => reserved,
    })
}

/// Takes the rows of the periods `holder` holds reservations in (and on SQLite
/// the write lock), before the holder's own row: the ledger's lock order (see
/// the module's comment). One write, so it is the transaction's first
/// statement and on SQLite takes the write lock before anything is read.
async fn lock_holders_periods(tx: &mut sqlx::Transaction<'_, Any>, holder: &str) -> Result<()> {
    sqlx::query(
        "UPDATE freshen_credit_periods SET spent = spent WHERE period IN \
         (SELECT period FROM freshen_reservations WHERE holder = $1)",
    )
    .bind(holder.to_owned())
    .execute(&mut **tx)
    .await
    .context("locking the holder's credit periods")?;
    Ok(())
}

/// Takes the period's row (and on SQLite the write lock) for the transaction.
async fn lock_period(tx: &mut sqlx::Transaction<'_, Any>, period: &str) -> Result<()> {
    sqlx::query("UPDATE freshen_credit_periods SET spent = spent WHERE period = $1")
        .bind(period.to_owned())
        .execute(&mut **tx)
        .await
        .context("locking the credit period")?;
    Ok(())
}

/// The inputs of [`Funds::room`] for `period`, and with a holder, its run's
/// (`--max-credits`) and what the other holders have reserved. One statement.
async fn read_funds(
    conn: &mut sqlx::AnyConnection,
    period: &str,
    reserve: i64,
    req: Option<&Holder>,
) -> Result<(Funds, i64)> {
    const SUM: &str = "CAST(COALESCE(SUM(reserved), 0) AS BIGINT)";
    let sql = format!(
        "SELECT p.allowance, p.spent, p.vendor_remaining, p.vendor_spent_at, p.uncertain, \
         (SELECT {SUM} FROM freshen_reservations r WHERE r.period = p.period), \
         (SELECT {SUM} FROM freshen_reservations r WHERE r.period = p.period AND r.holder = $2), \
         (SELECT credits_spent FROM freshen_runs WHERE id = $3), \
         (SELECT {SUM} FROM freshen_reservations WHERE run_id = $3) \
         FROM freshen_credit_periods p WHERE p.period = $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(period.to_owned())
        .bind(req.map_or(String::new(), |r| r.worker.clone()))
        .bind(req.map_or(-1, |r| r.run))
        .fetch_one(&mut *conn)
        .await
        .context("reading the period's credits")?;
    let spent: i64 = row.try_get(1)?;
    let vendor = match (
        row.try_get::<Option<i64>, _>(2)?,
        row.try_get::<Option<i64>, _>(3)?,
    ) {
        // Every credit spent since the vendor counted comes off its count.
        (Some(left), at) => Some(left - (spent - at.unwrap_or(spent)).max(0)),
        (None, _) => None,
    };
    let reserved: i64 = row.try_get(5)?;
    let mine: i64 = row.try_get(6)?;
    let run = match req.and_then(|r| r.run_limit) {
        Some(max) => Some(RunCap {
            max,
            spent: row.try_get::<Option<i64>, _>(7)?.unwrap_or(0),
            reserved: row.try_get(8)?,
        }),
        None => None,
    };
    let funds = Funds {
        allowance: row.try_get(0)?,
        reserve,
        spent,
        uncertain: row.try_get(4)?,
        reserved,
        vendor,
        run,
    };
    Ok((funds, reserved - mine))
}

/// Moves `charged` credits of the holder's reservation in `period` into the
/// period's spent, in the checkpoint's transaction. Returns what it settled:
/// nothing if the holder was declared dead meanwhile, since its whole
/// reservation was then counted as spent already.
pub(super) async fn settle(
    tx: &mut sqlx::Transaction<'_, Any>,
    worker: &str,
    period: &str,
    charged: i64,
) -> Result<i64> {
    if charged == 0 {
        return Ok(0);
    }
    sqlx::query("UPDATE freshen_credit_periods SET spent = spent + $1 WHERE period = $2")
        .bind(charged)
        .bind(period.to_owned())
        .execute(&mut **tx)
        .await
        .context("charging the period")?;
    let held = sqlx::query(
        // A call may cost more than it reserved (a vendor's reported cost over
        // credits.cost): spent gets all of it, the reservation no less than 0.
        "UPDATE freshen_reservations SET \
         reserved = CASE WHEN reserved > $1 THEN reserved - $1 ELSE 0 END, \
         charged = charged + $1 WHERE holder = $2 AND period = $3",
    )
    .bind(charged)
    .bind(worker.to_owned())
    .bind(period.to_owned())
    .execute(&mut **tx)
    .await
    .context("settling the run's reservation")?
    .rows_affected();
    if held == 1 {
        return Ok(charged);
    }
    // Reaped: the period counted this holder's whole reservation already.
    sqlx::query("UPDATE freshen_credit_periods SET spent = spent - $1 WHERE period = $2")
        .bind(charged)
        .bind(period.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(0)
}
