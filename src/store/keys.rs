//! The user table's key column, as the plan and the checkpoint need it.
//!
//! freshen writes a record by its key, so a key must be set and name one record
//! alone. What the schema guarantees is read once, at connect: a key column that
//! may hold NULL, or has no unique index on it alone, makes the plan leave out
//! the records with a NULL key or a key shared with another record (they are
//! counted and reported, and `--strict` refuses such a plan). A column whose key
//! is unique and `NOT NULL` costs the plan nothing more.
//!
//! The key is snapshotted as text into `freshen_items.key`; the checkpoint must
//! find the row again with the column's own comparison. On SQLite the plan also
//! keeps the value itself (`freshen_items.key_value`, no affinity, so an integer
//! in a BLOB or untyped column stays an integer); on PostgreSQL the text is cast
//! back to the column's type (`uuid`, `bigint`, `character varying`).

use anyhow::{Context, Result};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::{Backend, Store, bind_all};
use crate::error::usage;
use crate::selection::Selection;

/// What the schema says of the key column.
#[derive(Debug, Clone)]
pub(super) struct KeyColumn {
    /// The column's name, for messages.
    pub name: String,
    /// May hold NULL.
    pub nullable: bool,
    /// A primary key or a unique index on the key alone (not partial): no two
    /// records share a key.
    pub unique: bool,
    /// PostgreSQL: the column's type by its qualified name, without its modifier
    /// (`pg_catalog."varchar"`, not `varchar(8)`, whose cast would truncate).
    pub pg_type: Option<String>,
}

impl KeyColumn {
    /// Reads the key column's constraints (and type, on PostgreSQL).
    pub async fn inspect(
        pool: &AnyPool,
        backend: Backend,
        table: &str,
        key: &str,
    ) -> Result<KeyColumn> {
        let reading = || format!("reading the constraints of the key column `{key}`");
        match backend {
            Backend::Sqlite => {
                // An INTEGER PRIMARY KEY is the rowid: never NULL, always unique,
                // and in no index list.
                let row = sqlx::query(
                    "SELECT c.\"notnull\", c.pk = 1 AND lower(c.type) = 'integer' \
                     AND (SELECT COUNT(*) FROM pragma_table_info($1) WHERE pk > 0) = 1, \
                     (SELECT COUNT(*) FROM pragma_index_list($1) AS l WHERE l.\"unique\" = 1 \
                      AND l.partial = 0 AND (SELECT COUNT(*) FROM pragma_index_info(l.name)) = 1 \
                      AND (SELECT name FROM pragma_index_info(l.name)) = $2) \
                     FROM pragma_table_info($1) AS c WHERE c.name = $2",
                )
                .bind(table.to_owned())
                .bind(key.to_owned())
                .fetch_one(pool)
                .await
                .with_context(reading)?;
                let rowid: bool = row.try_get::<i64, _>(1)? == 1;
                Ok(KeyColumn {
                    name: key.to_owned(),
                    nullable: row.try_get::<i64, _>(0)? == 0 && !rowid,
                    unique: rowid || row.try_get::<i64, _>(2)? > 0,
                    pg_type: None,
                })
            }
            Backend::Postgres => {
                let row = sqlx::query(
                    // The type by its qualified name: `pg_catalog.bpchar` has no
                    // length, where `character` would mean char(1) and truncate.
                    "SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname), \
                     a.attnotnull, EXISTS (SELECT 1 \
                     FROM pg_index x WHERE x.indrelid = a.attrelid AND x.indisunique \
                     AND x.indnkeyatts = 1 AND x.indkey[0] = a.attnum AND x.indpred IS NULL \
                     AND x.indexprs IS NULL) \
                     FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                     JOIN pg_namespace n ON n.oid = t.typnamespace \
                     WHERE a.attrelid = to_regclass($1) \
                     AND a.attname::text = $2 AND NOT a.attisdropped",
                )
                .bind(format!("\"{table}\""))
                .bind(key.to_owned())
                .fetch_one(pool)
                .await
                .with_context(reading)?;
                let pg_type: String = row.try_get(0)?;
                Ok(KeyColumn {
                    name: key.to_owned(),
                    nullable: !row.try_get::<bool, _>(1)?,
                    unique: row.try_get(2)?,
                    // The name comes from the catalog; anything but a plain type
                    // name (an array, say) is compared by the column's kind instead.
                    pg_type: pg_type
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b" _.\"".contains(&b))
                        .then_some(pg_type),
                })
            }
        }
    }
}

/// Records of a selection the plan leaves out, and a few of their keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyProblems {
    /// The key column's name, for messages.
    pub key: String,
    /// Records whose key is NULL.
    pub nulls: i64,
    /// Records whose key another record has too (all of them: none is written).
    pub duplicates: i64,
    /// A few of the shared keys, in order.
    pub examples: Vec<String>,
}

/// Shared keys named in a message.
const EXAMPLES: i64 = 5;

impl KeyProblems {
    /// Records left out.
    pub fn skipped(&self) -> i64 {
        self.nulls + self.duplicates
    }

    /// What was found: "1 record whose key `id` is NULL and 4 records share a
    /// key `id` with another record (5, 7)".
    pub fn describe(&self) -> String {
        let key = &self.key;
        let mut parts = Vec::new();
        match self.nulls {
            0 => {}
            1 => parts.push(format!("1 record whose key `{key}` is NULL")),
            n => parts.push(format!("{n} records whose key `{key}` is NULL")),
        }
        if self.duplicates > 0 {
            let mut shown = self.examples.join(", ");
            if self.examples.len() as i64 == EXAMPLES {
                shown.push_str(", …");
            }
            parts.push(format!(
                "{} records share a key `{key}` with another record ({shown})",
                self.duplicates
            ));
        }
        parts.join(" and ")
    }

    /// Why they are left out, and how to bring them in.
    const WHY: &str = "freshen writes a record by its key, so a key must be set and name \
                       one record alone: give those records unique keys, or leave them out \
                       with source.filter";

    /// The warning of a plan that leaves them out.
    pub fn warning(&self) -> String {
        format!(
            "skipping {}: {} (--strict refuses such a plan)",
            self.describe(),
            Self::WHY
        )
    }

    /// The error of `--strict`, a usage error (exit 2).
    pub fn refusal(&self) -> anyhow::Error {
        usage(format!(
            "--strict: {}; {}, then run again (without --strict they are skipped)",
            self.describe(),
            Self::WHY
        ))
    }
}

impl Store {
    /// The records of `selection` the plan leaves out for their keys: set-based
    /// counts, run only for what the schema does not rule out (none for a unique,
    /// `NOT NULL` key).
    pub async fn key_problems(&self, selection: &Selection) -> Result<KeyProblems> {
        let mut problems = KeyProblems {
            key: self.key_column.name.clone(),
            ..KeyProblems::default()
        };
        if self.key_column.nullable {
            let sql = self.sql.null_keys(selection);
            problems.nulls = bind_all(
                sqlx::query(AssertSqlSafe(sql)),
                self.selection_binds(selection)?,
            )
            .fetch_one(&self.pool)
            .await
            .context("counting the records whose key is NULL")?
            .try_get(0)?;
        }
        if !self.key_column.unique {
            let (count, examples) = self.sql.duplicate_keys(selection, EXAMPLES);
            problems.duplicates = bind_all(
                sqlx::query(AssertSqlSafe(count)),
                self.selection_binds(selection)?,
            )
            .fetch_one(&self.pool)
            .await
            .context("counting the records that share a key")?
            .try_get(0)?;
            if problems.duplicates > 0 {
                problems.examples = bind_all(
                    sqlx::query(AssertSqlSafe(examples)),
                    self.selection_binds(selection)?,
                )
                .fetch_all(&self.pool)
                .await
                .context("listing keys that records share")?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            }
        }
        Ok(problems)
    }
}
