//! Planning a run: the selection turned into SQL and its binds, the run's
//! items snapshotted, and the reads the estimate makes of the same selection.

use anyhow::{Context, Result};
use sqlx::{AssertSqlSafe, Row};

use super::{Backend, Bind, Item, RunRow, Store, bind_all, now_stamp, query, rows::item_row};
use crate::error::usage;
use crate::record::ColumnKind;
use crate::selection::{IdSpec, Selection};

impl Store {
    /// Plans a new run: one row in `freshen_runs` and the selected keys snapshotted
    /// into `freshen_items`, stalest first, by one set-based statement, in one transaction.
    /// Plans a run of `selection`, at most `cap` records of it when given.
    /// Records whose key is NULL or shared are left out with a warning, or with
    /// `strict` refused (a usage error) before anything is planned.
    pub async fn plan(
        &self,
        selection: &Selection,
        cap: Option<u64>,
        strict: bool,
    ) -> Result<RunRow> {
        let problems = self.key_problems(selection).await?;
        if problems.skipped() > 0 {
            if strict {
                return Err(problems.refusal());
            }
            tracing::warn!("{}", problems.warning());
        }
        let binds = self.selection_binds(selection)?;
        let now = now_stamp();
        let mut tx = self
            .pool
            .begin()
            .await
            .context("starting the plan transaction")?;
        let id: i64 = query(&self.sql.insert_run)
            .bind(selection.canonical())
            .bind(now.clone())
            .fetch_one(&mut *tx)
            .await
            .context("creating the run")?
            .try_get(0)?;
        let plan_sql = self.sql.plan(selection, cap);
        let q = bind_all(sqlx::query(AssertSqlSafe(plan_sql)).bind(id), binds);
        let total = q
            .execute(&mut *tx)
            .await
            .context("planning the run's items")?
            .rows_affected() as i64;
        query(&self.sql.set_total)
            .bind(total)
            .bind(problems.skipped())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await.context("committing the plan")?;
        if self.backend == Backend::Postgres {
            // Without statistics PostgreSQL takes the fresh items for a handful
            // and checkpoints each batch by hashing every pending item of the run
            // (90 ms a batch at 100,000 items) instead of looking up its seqs.
            sqlx::query("ANALYZE freshen_items")
                .execute(&self.pool)
                .await
                .context("analyzing the planned items")?;
        }
        Ok(self.run(id).await?.expect("the run was just inserted"))
    }

    /// How many records `selection` takes (before `--limit`), and how many its
    /// `--stale-before` leaves out as already fresh. Reads only.
    pub async fn count_selection(&self, selection: &Selection) -> Result<(i64, i64)> {
        let binds = || self.selection_binds(selection);
        let sql = self.sql.count(selection, false);
        let selected: i64 = bind_all(sqlx::query(AssertSqlSafe(sql)), binds()?)
            .fetch_one(&self.pool)
            .await
            .context("counting the selected records")?
            .try_get(0)?;
        let fresh: i64 = if selection.stale_before.is_some() {
            let sql = self.sql.count(selection, true);
            bind_all(sqlx::query(AssertSqlSafe(sql)), binds()?)
                .fetch_one(&self.pool)
                .await
                .context("counting the fresh records")?
                .try_get(0)?
        } else {
            0
        };
        Ok((selected, fresh))
    }

    /// The key and `refreshed_at` of the record at 0-based position `n` of the
    /// plan's order (stalest first) for `selection`, if there is one.
    pub async fn nth_stalest(
        &self,
        selection: &Selection,
        n: i64,
    ) -> Result<Option<(String, Option<String>)>> {
        let binds = self.selection_binds(selection)?;
        let sql = self.sql.nth_stalest(selection, binds.len());
        let row = bind_all(sqlx::query(AssertSqlSafe(sql)), binds)
            .bind(n)
            .fetch_optional(&self.pool)
            .await
            .context("finding where the budget cuts")?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// The key and `refreshed_at` of the `n`th (0-based) pending item of `run`.
    pub async fn nth_pending(&self, run: i64, n: i64) -> Result<Option<(String, Option<String>)>> {
        let key: Option<String> = sqlx::query(
            "SELECT key FROM freshen_items WHERE run_id = $1 AND state = 'pending' \
             ORDER BY seq LIMIT 1 OFFSET $2",
        )
        .bind(run)
        .bind(n)
        .fetch_optional(&self.pool)
        .await
        .context("finding where the budget cuts")?
        .map(|r| r.try_get(0))
        .transpose()?;
        let Some(key) = key else { return Ok(None) };
        let q = sqlx::query(AssertSqlSafe(self.sql.refreshed_at_of()));
        let q = match self.key_kind {
            ColumnKind::Integer => q.bind(key.parse::<i64>().unwrap_or_default()),
            _ => q.bind(key.clone()),
        };
        let at: Option<String> = q
            .fetch_optional(&self.pool)
            .await
            .context("reading the record at the budget's cut")?
            .and_then(|r| r.try_get(0).ok())
            .flatten();
        Ok(Some((key, at)))
    }

    /// The values bound into the plan's WHERE clause, in the order `Statements::plan`
    /// writes placeholders. Checks `--ids` against the key's kind.
    pub(super) fn selection_binds(&self, selection: &Selection) -> Result<Vec<Bind>> {
        let mut binds = Vec::new();
        for spec in &selection.ids {
            match (spec, self.key_kind) {
                (IdSpec::Range { from, to }, ColumnKind::Integer) => {
                    binds.extend([Bind::Int(*from), Bind::Int(*to)])
                }
                (IdSpec::Range { .. }, _) => {
                    return Err(usage(format!(
                        "--ids {spec}: a range needs an integer key, and `source.key` is text"
                    )));
                }
                (IdSpec::Key(k), ColumnKind::Integer) => {
                    let i = k.parse::<i64>().map_err(|_| {
                        usage(format!("--ids {k}: `source.key` is an integer column, and `{k}` is not an integer"))
                    })?;
                    binds.push(Bind::Int(i));
                }
                (IdSpec::Key(k), _) => binds.push(Bind::Text(k.clone())),
            }
        }
        if let Some(stale) = &selection.stale_before {
            binds.push(Bind::Text(stale.0.clone()));
        }
        Ok(binds)
    }

    /// Up to `limit` pending items after `after_seq`, in order.
    pub async fn pending_after(&self, run: i64, after_seq: i64, limit: i64) -> Result<Vec<Item>> {
        let rows = query(&self.sql.pending_after)
            .bind(run)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("reading pending items")?;
        rows.iter().map(item_row).collect()
    }
}
