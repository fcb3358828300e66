//! Every SQL statement freshen runs, for SQLite and PostgreSQL alike, through
//! sqlx's `Any` driver (`$n` placeholders, types that both engines share).
//!
//! The user's table and column names come from the configuration. They are checked
//! as plain identifiers by [`Ident`] and quoted in one place, [`Ident::quoted`];
//! the statements that use them are built once, at connect time, in [`Statements`].
//! Every value goes in as a bound parameter.

/// The database clock in Unix milliseconds (PostgreSQL), as SQL text: the
/// workers of a joined run may be on hosts whose clocks disagree. A macro, so
/// the statements that use it are `&'static str` built at compile time.
macro_rules! now_ms {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    };
}

/// The database clock in Unix microseconds (PostgreSQL), as SQL text.
macro_rules! now_us {
    () => {
        "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"
    };
}

mod checkpoint;
mod connect;
mod errors;
mod first_connect;
mod fleet;
mod keys;
mod ledger;
mod lock;
mod migrations;
mod outage;
mod periods;
mod plan;
mod prune;
mod rows;
mod runs;
mod samples;
mod sent;
mod session;
mod statements;

use std::sync::Arc;

use sqlx::{AnyPool, AssertSqlSafe};

use crate::record::ColumnKind;
use crate::selection::stamp;

pub use crate::ident::Ident;
pub use checkpoint::Rejected;
pub use errors::{explain_write_failure, is_disconnect};
pub use fleet::{PaceGrant, PgStore, WorkerRow};
pub use keys::KeyProblems;
pub use ledger::{Account, Holder};
pub use lock::{LockHolder, LockMode, gone_here, lock_file, this_process};
pub use outage::OutageRow;
pub use prune::Pruned;
pub use rows::{
    CallCounts, Finished, History, Item, ItemCounts, Ledger, PeriodRow, Resolution, RunRow,
};
pub use samples::{FailureGroup, Sample};
use statements::Statements;

/// Which engine is behind the URL: read once, with the URL, by `config`.
pub use crate::config::Backend;

/// The kinds of the columns a run reads and writes, from the table's schema.
#[derive(Debug, Clone)]
pub struct Kinds {
    /// `source.key`'s.
    pub key: ColumnKind,
    /// The mapped columns', in `api.response` order.
    pub mapped: Vec<ColumnKind>,
    /// The other columns the request's templates read, in `Api::columns` order.
    pub params: Vec<ColumnKind>,
}

pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// `source.table`: names the table's lock and shared pace.
    table: String,
    sql: Statements,
    ledger: ledger::Sql,
    key_kind: ColumnKind,
    key_column: keys::KeyColumn,
    kinds: Kinds,
    /// The SQLite file and its identity (device, inode) when opened.
    sqlite_file: Option<(std::path::PathBuf, (u64, u64))>,
    /// The run lock's lower layer, while this process holds it (see [`lock`]).
    os_lock: tokio::sync::Mutex<lock::OsLock>,
    /// PostgreSQL: what each connection is set up with.
    session: Option<session::Settings>,
}

impl Store {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The kinds of the configured columns.
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

enum Bind {
    Int(i64),
    Text(String),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind_all(mut q: AnyQuery<'_>, binds: Vec<Bind>) -> AnyQuery<'_> {
    for b in binds {
        q = match b {
            Bind::Int(i) => q.bind(i),
            Bind::Text(s) => q.bind(s),
        };
    }
    q
}

fn query(sql: &Arc<str>) -> AnyQuery<'static> {
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// A duration in whole milliseconds, as the statements bind it.
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub fn now_stamp() -> String {
    stamp(jiff::Timestamp::now())
}
