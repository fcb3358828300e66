//! freshen's own tables: the migrations embedded in the binary.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// freshen's migrations, embedded in the binary, for the engine behind the URL.
pub(super) fn migrator(backend: Backend) -> Migrator {
    // (version, name, sqlite, postgres): versions are never reused or renumbered.
    let all = [
        (
            1,
            "freshen",
            include_str!("../../migrations/sqlite/0001_freshen.sql"),
            include_str!("../../migrations/postgres/0001_freshen.sql"),
        ),
        (
            2,
            "locks",
            include_str!("../../migrations/sqlite/0002_locks.sql"),
            include_str!("../../migrations/postgres/0002_locks.sql"),
        ),
        (
            3,
            "timeline",
            include_str!("../../migrations/sqlite/0003_timeline.sql"),
            include_str!("../../migrations/postgres/0003_timeline.sql"),
        ),
        (
            4,
            "reserved",
            include_str!("../../migrations/sqlite/0004_reserved.sql"),
            include_str!("../../migrations/postgres/0004_reserved.sql"),
        ),
        (
            5,
            "fleet",
            include_str!("../../migrations/sqlite/0005_fleet.sql"),
            include_str!("../../migrations/postgres/0005_fleet.sql"),
        ),
        (
            6,
            "items_unchecked",
            include_str!("../../migrations/sqlite/0006_items_unchecked.sql"),
            include_str!("../../migrations/postgres/0006_items_unchecked.sql"),
        ),
        (
            7,
            "keys",
            include_str!("../../migrations/sqlite/0007_keys.sql"),
            include_str!("../../migrations/postgres/0007_keys.sql"),
        ),
        (
            8,
            "ledger",
            include_str!("../../migrations/sqlite/0008_ledger.sql"),
            include_str!("../../migrations/postgres/0008_ledger.sql"),
        ),
        (
            9,
            "outage",
            include_str!("../../migrations/sqlite/0009_outage.sql"),
            include_str!("../../migrations/postgres/0009_outage.sql"),
        ),
        (
            10,
            "sent",
            include_str!("../../migrations/sqlite/0010_sent.sql"),
            include_str!("../../migrations/postgres/0010_sent.sql"),
        ),
        (
            11,
            "resume_after",
            include_str!("../../migrations/sqlite/0011_resume_after.sql"),
            include_str!("../../migrations/postgres/0011_resume_after.sql"),
        ),
    ];
    let migrations = all
        .into_iter()
        .map(|(version, name, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}
