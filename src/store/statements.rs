//! The SQL text of every statement, built once per process from the configured
//! identifiers. Shared text (`Arc<str>`) so each execution costs no allocation for it.

use std::sync::Arc;

use super::Backend;
use super::keys::KeyColumn;
use crate::config::Config;
use crate::ident::Ident;
use crate::record::ColumnKind;
use crate::selection::{IdSpec, Selection};

pub(super) struct Statements {
    pub latest_run_with: Arc<str>,
    pub latest_run: Arc<str>,
    pub run_by_id: Arc<str>,
    pub insert_run: Arc<str>,
    /// The run's total and the records its plan skipped for their keys.
    pub set_total: Arc<str>,
    pub pending_after: Arc<str>,
    /// `--join`: claims the next pending items no live worker holds.
    pub claim: Arc<str>,
    /// Forgets every claim on a run's pending items (a run without `--join`).
    pub clear_leases: Arc<str>,
    pub add_run_counts: Arc<str>,
    pub set_status: Arc<str>,
    pub item_counts: Arc<str>,
    /// Whether the run has a pending item: one index probe, not a count.
    pub has_pending: Arc<str>,
    /// The checkpoint's two statements (see [`Statements::resolve_items_sql`] and
    /// [`Statements::update_records_sql`]): the same text for every batch.
    pub resolve_items: Arc<str>,
    pub update_records: Arc<str>,
    /// Fails one item the checkpoint could not write, with the reason.
    pub fail_item: Arc<str>,
    pub failures: Arc<str>,
    pub ensure_period: Arc<str>,
    pub period: Arc<str>,
    pub set_vendor_count: Arc<str>,
    /// Credits spent, calls made and records resolved by all runs of the table
    /// that still have their items (`freshen prune` removes a finished run's: its
    /// credits without its records would inflate the retry overhead).
    pub history: Arc<str>,
    /// The mapped columns, quoted, in `api.response` order.
    mapped: Vec<String>,
    key_kind: ColumnKind,
    backend: Backend,
    /// For the plan: `FROM table` and the key as text.
    table: String,
    key: String,
    refreshed_at: String,
    filter: Option<String>,
    /// The key column as the schema defines it (see `keys`).
    key_column: KeyColumn,
}

/// The database clock in Unix milliseconds (PostgreSQL).
const NOW_MS: &str = now_ms!();

const RUN_COLUMNS: &str = "id, selection, status, total, calls_ok, calls_throttled, calls_transient, \
                           calls_permanent, credits_spent, skipped, created_at, updated_at, finished_at";

/// The statements that read items with their record's columns the
/// request's templates read: the pending items after a `seq` (a solo run) and the
/// claim of a batch (`--join`, PostgreSQL only).
fn item_reads(
    config: &Config,
    key_kind: ColumnKind,
    key_column: &KeyColumn,
    backend: Backend,
) -> (String, String) {
    let s = &config.source;
    let (table, key) = (s.table.quoted(), s.key.quoted());
    // Non-key columns the request's templates read are joined from the record.
    let params: Vec<String> = config
        .api
        .columns(&s.key)
        .iter()
        .map(Ident::quoted)
        .collect();
    let pending_after = if params.is_empty() {
        "SELECT i.seq, i.key, i.attempts FROM freshen_items i \
         WHERE i.run_id = $1 AND i.state = 'pending' AND i.seq > $2 ORDER BY i.seq LIMIT $3"
            .to_owned()
    } else {
        // The item's key is text; compare in the key column's own type so its index is used.
        let item_key = item_key(backend, key_kind, key_column, "i");
        let cols: Vec<String> = params
            .iter()
            .map(|c| format!("CAST(t.{c} AS TEXT)"))
            .collect();
        format!(
            "SELECT i.seq, i.key, i.attempts, {} FROM freshen_items i JOIN {table} t ON t.{key} = {item_key} \
             WHERE i.run_id = $1 AND i.state = 'pending' AND i.seq > $2 ORDER BY i.seq LIMIT $3",
            cols.join(", ")
        )
    };

    let claim = {
        let item_key = item_key(backend, key_kind, key_column, "c");
        let (cols, join): (String, String) = if params.is_empty() {
            (String::new(), String::new())
        } else {
            (
                params
                    .iter()
                    .map(|c| format!(", CAST(t.{c} AS TEXT)"))
                    .collect(),
                format!(" JOIN {table} t ON t.{key} = {item_key}"),
            )
        };
        // PostgreSQL only (`--join`): SKIP LOCKED lets workers claim side by
        // side; an item whose claimant's heartbeat is stale is free again.
        format!(
            "WITH c AS (UPDATE freshen_items SET lease_owner = $2 \
             WHERE run_id = $1 AND seq IN (SELECT seq FROM freshen_items \
             WHERE run_id = $1 AND state = 'pending' AND (lease_owner IS NULL OR lease_owner \
             NOT IN (SELECT worker FROM freshen_workers WHERE heartbeat_at >= {NOW_MS} - $3)) \
             ORDER BY seq LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, key, attempts) \
             SELECT c.seq, c.key, c.attempts{cols} FROM c{join} ORDER BY c.seq"
        )
    };
    (pending_after, claim)
}

impl Statements {
    /// `mapped`: the kinds of the mapped columns, in `api.response` order.
    pub fn new(
        config: &Config,
        key_kind: ColumnKind,
        key_column: &KeyColumn,
        mapped: &[ColumnKind],
        backend: Backend,
    ) -> Statements {
        let s = &config.source;
        let table = s.table.quoted();
        let key = s.key.quoted();
        let refreshed_at = s.refreshed_at.quoted();
        // The source table's name goes in as a literal: it is a checked identifier.
        let table_lit = format!("'{}'", s.table);

        let (pending_after, claim) = item_reads(config, key_kind, key_column, backend);

        let a: fn(String) -> Arc<str> = Arc::from;
        let mut statements = Statements {
            latest_run_with: a(format!(
                "SELECT {RUN_COLUMNS} FROM freshen_runs WHERE source_table = {table_lit} AND selection = $1 \
                 ORDER BY id DESC LIMIT 1"
            )),
            latest_run: a(format!(
                "SELECT {RUN_COLUMNS} FROM freshen_runs WHERE source_table = {table_lit} ORDER BY id DESC LIMIT 1"
            )),
            run_by_id: a(format!("SELECT {RUN_COLUMNS} FROM freshen_runs WHERE id = $1")),
            insert_run: a(format!(
                "INSERT INTO freshen_runs (source_table, selection, status, created_at, updated_at) \
                 VALUES ({table_lit}, $1, 'planned', $2, $2) RETURNING id"
            )),
            set_total: a("UPDATE freshen_runs SET total = $1, skipped = $2 WHERE id = $3".into()),
            pending_after: a(pending_after),
            claim: a(claim),
            clear_leases: a("UPDATE freshen_items SET lease_owner = NULL \
                 WHERE run_id = $1 AND state = 'pending' AND lease_owner IS NOT NULL"
                .into()),
            add_run_counts: a("UPDATE freshen_runs SET calls_ok = calls_ok + $1, calls_throttled = calls_throttled + $2, \
                 calls_transient = calls_transient + $3, calls_permanent = calls_permanent + $4, \
                 credits_spent = credits_spent + $5, updated_at = $6 WHERE id = $7"
                .into()),
            set_status: a("UPDATE freshen_runs SET status = $1, updated_at = $2, finished_at = $3 \
                 WHERE id = $4".into()),
            item_counts: a("SELECT state, COUNT(*) FROM freshen_items WHERE run_id = $1 GROUP BY state".into()),
            has_pending: a("SELECT COUNT(*) FROM (SELECT 1 FROM freshen_items \
                 WHERE run_id = $1 AND state = 'pending' LIMIT 1) AS p"
                .into()),
            resolve_items: Arc::from(""),
            update_records: Arc::from(""),
            fail_item: a("UPDATE freshen_items SET state = 'failed', reason = $1 \
                 WHERE run_id = $2 AND seq = $3"
                .into()),
            failures: a("SELECT key, reason FROM freshen_items WHERE run_id = $1 AND state = 'failed' \
                 ORDER BY seq LIMIT $2"
                .into()),
            ensure_period: a("INSERT INTO freshen_credit_periods (period, allowance, spent) VALUES ($1, $2, 0) \
                 ON CONFLICT (period) DO NOTHING"
                .into()),
            period: a("SELECT period, allowance, spent, vendor_remaining, vendor_seen_at, \
                 resume_after_ms FROM freshen_credit_periods WHERE period = $1".into()),
            // The period's spent as the count is read: what is spent after it
            // comes off the count (see `store::ledger`).
            set_vendor_count: a("UPDATE freshen_credit_periods SET vendor_remaining = $1, vendor_seen_at = $2, \
                 vendor_spent_at = spent WHERE period = $3".into()),
            history: a(format!(
                "SELECT CAST(COALESCE(SUM(r.credits_spent), 0) AS BIGINT), \
                 CAST(COALESCE(SUM(r.calls_ok + r.calls_throttled + r.calls_transient \
                   + r.calls_permanent), 0) AS BIGINT), \
                 (SELECT COUNT(*) FROM freshen_items i JOIN freshen_runs r2 ON r2.id = i.run_id \
                  WHERE r2.source_table = {table_lit} AND i.state <> 'pending') \
                 FROM freshen_runs r WHERE r.source_table = {table_lit} \
                 AND EXISTS (SELECT 1 FROM freshen_items i WHERE i.run_id = r.id)"
            )),
            mapped: config.api.response.iter().map(|m| m.column.quoted()).collect(),
            key_kind,
            backend,
            table,
            key,
            refreshed_at,
            filter: s.filter.clone(),
            key_column: key_column.clone(),
        };
        statements.resolve_items = a(statements.resolve_items_sql());
        statements.update_records = a(statements.update_records_sql(mapped));
        statements
    }

    /// The WHERE clause of `selection`, its placeholders numbered from `first` in
    /// the order `Store::selection_binds` gives the values. With `fresh`, the
    /// records the ids and filter select but `--stale-before` leaves out.
    fn selection_where(&self, selection: &Selection, first: usize, fresh: bool) -> String {
        let mut conds = self.selection_conds(selection, first, fresh);
        conds.extend(self.key_guard());
        where_clause(&conds)
    }

    /// The conditions of `selection`, as [`Statements::selection_where`] numbers
    /// them, without the key guard.
    fn selection_conds(&self, selection: &Selection, first: usize, fresh: bool) -> Vec<String> {
        let (key, ra) = (&self.key, &self.refreshed_at);
        let mut n = first - 1;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        let mut conds = Vec::new();
        if !selection.ids.is_empty() {
            let ids: Vec<String> = selection
                .ids
                .iter()
                .map(|spec| match spec {
                    IdSpec::Key(_) => format!("{key} = {}", self.as_key(&next())),
                    IdSpec::Range { .. } => format!("{key} BETWEEN {} AND {}", next(), next()),
                })
                .collect();
            conds.push(format!("({})", ids.join(" OR ")));
        }
        if selection.stale_before.is_some() {
            let stale = format!("({ra} IS NULL OR {ra} < {})", next());
            conds.push(if fresh { format!("NOT {stale}") } else { stale });
        }
        if let Some(filter) = &self.filter {
            conds.push(format!("({filter})"));
        }
        conds
    }

    /// What leaves out the records a key cannot write alone: a NULL key, or one
    /// another record of the table shares (in the whole table, not only the
    /// selection: an update by that key would write them all). Nothing when the
    /// schema rules it out, so a unique `NOT NULL` key's plan costs no more.
    fn key_guard(&self) -> Vec<String> {
        let key = &self.key;
        let mut guard = Vec::new();
        if self.key_column.nullable {
            guard.push(format!("{key} IS NOT NULL"));
        }
        if !self.key_column.unique {
            guard.push(format!(
                "CAST({key} AS TEXT) NOT IN ({})",
                self.shared_keys()
            ));
        }
        guard
    }

    /// The keys, as text, that more than one record of the table has. As text:
    /// records whose keys read the same would be sent to the same URL.
    fn shared_keys(&self) -> String {
        let (table, key) = (&self.table, &self.key);
        format!(
            "SELECT CAST({key} AS TEXT) FROM {table} WHERE {key} IS NOT NULL \
             GROUP BY CAST({key} AS TEXT) HAVING COUNT(*) > 1"
        )
    }

    /// How many records of `selection` have a NULL key: the selection's values.
    pub fn null_keys(&self, selection: &Selection) -> String {
        let mut conds = self.selection_conds(selection, 1, false);
        conds.push(format!("{} IS NULL", self.key));
        format!(
            "SELECT COUNT(*) FROM {}{}",
            self.table,
            where_clause(&conds)
        )
    }

    /// How many records of `selection` share their key with another, and the
    /// first `examples` of those keys: the selection's values for each.
    pub fn duplicate_keys(&self, selection: &Selection, examples: i64) -> (String, String) {
        let (table, key) = (&self.table, &self.key);
        let mut conds = self.selection_conds(selection, 1, false);
        conds.push(format!("CAST({key} AS TEXT) IN ({})", self.shared_keys()));
        let where_ = where_clause(&conds);
        (
            format!("SELECT COUNT(*) FROM {table}{where_}"),
            format!(
                "SELECT DISTINCT CAST({key} AS TEXT) AS freshen_key FROM {table}{where_} \
                 ORDER BY 1 LIMIT {examples}"
            ),
        )
    }

    /// Stalest first: never refreshed, then oldest `refreshed_at`, then key.
    fn stalest_first(&self) -> String {
        let (key, ra) = (&self.key, &self.refreshed_at);
        format!("CASE WHEN {ra} IS NULL THEN 0 ELSE 1 END, {ra}, {key}")
    }

    /// The set-based plan for `selection`: `$1` is the run id, then the selection's
    /// values. Stalest first.
    /// `cap`, when given, limits the plan further than the selection's `--limit`.
    pub fn plan(&self, selection: &Selection, cap: Option<u64>) -> String {
        let (table, key) = (&self.table, &self.key);
        let where_ = self.selection_where(selection, 2, false);
        let order = self.stalest_first();
        let limit = match (selection.limit, cap) {
            (Some(l), Some(c)) => Some(l.min(c)),
            (l, c) => l.or(c),
        };
        let limit = limit
            .map(|l| format!(" ORDER BY 2 LIMIT {l}"))
            .unwrap_or_default();
        // SQLite keeps the key's value too, in its own storage class (see `keys`).
        let (value_col, value) = match self.backend {
            Backend::Sqlite => (", key_value", format!(", {key}")),
            Backend::Postgres => ("", String::new()),
        };
        format!(
            "INSERT INTO freshen_items (run_id, seq, key{value_col}, state, attempts) \
             SELECT $1, ROW_NUMBER() OVER (ORDER BY {order}), CAST({key} AS TEXT){value}, \
             'pending', 0 FROM {table}{where_}{limit}"
        )
    }

    /// How many records `selection` takes (before its `--limit`), or with `fresh`,
    /// how many its `--stale-before` leaves out as fresh. The selection's values.
    pub fn count(&self, selection: &Selection, fresh: bool) -> String {
        let where_ = self.selection_where(selection, 1, fresh);
        format!("SELECT COUNT(*) FROM {}{where_}", self.table)
    }

    /// The key and `refreshed_at` of the record at a position of the plan's order:
    /// the selection's values, then the offset.
    pub fn nth_stalest(&self, selection: &Selection, binds: usize) -> String {
        let (table, key, ra) = (&self.table, &self.key, &self.refreshed_at);
        let where_ = self.selection_where(selection, 1, false);
        format!(
            // Aliased: PostgreSQL resolves ORDER BY names against the output
            // columns first, and `CAST(id AS TEXT)` would be called `id`, so the
            // key would sort as text.
            "SELECT CAST({key} AS TEXT) AS freshen_key, {ra} AS freshen_refreshed_at \
             FROM {table}{where_} ORDER BY {} LIMIT 1 OFFSET ${}",
            self.stalest_first(),
            binds + 1
        )
    }

    /// `refreshed_at` of one record, by key.
    pub fn refreshed_at_of(&self) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} = {}",
            self.refreshed_at,
            self.table,
            self.key,
            self.as_key("$1")
        )
    }

    /// A bound key compared with the key column: on PostgreSQL cast to the
    /// column's type (a text parameter does not compare with a `uuid`).
    fn as_key(&self, placeholder: &str) -> String {
        match (self.backend, &self.key_column.pg_type) {
            (Backend::Postgres, Some(t)) => format!("CAST({placeholder} AS {t})"),
            _ => placeholder.to_owned(),
        }
    }

    /// A JSON array bound as parameter `$n`, read as rows `e` whose column `value`
    /// holds one element: SQLite's `json_each`, PostgreSQL's `json_array_elements`.
    fn json_rows(&self, n: usize) -> String {
        match self.backend {
            Backend::Sqlite => format!("json_each(${n}) AS e"),
            Backend::Postgres => format!("json_array_elements(CAST(${n} AS JSON)) AS e(value)"),
        }
    }

    /// Resolves a batch of items in one statement, each only while still pending
    /// and not claimed by another worker: `$1` updated_at, `$2` the run, `$3` the
    /// items as a JSON array of `[seq, state, attempts, reason]`, `$4` this
    /// worker. Returns the seqs it resolved. The text is
    /// the same for every batch, so the statement is prepared once per connection,
    /// and binds three values however many items there are. `MATERIALIZED` and
    /// `seq IN (SELECT seq FROM v)`: the batch is read first and each item found by
    /// its seq; without them SQLite (3.51) scans every pending item of the run for
    /// each batch, a cost that grows with the run (562 ms of CPU per 1,000 records
    /// at 1,000,000).
    fn resolve_items_sql(&self) -> String {
        format!(
            "WITH v (seq, state, attempts, reason) AS MATERIALIZED (SELECT CAST(e.value ->> 0 AS BIGINT), \
             e.value ->> 1, CAST(e.value ->> 2 AS BIGINT), e.value ->> 3 FROM {}) \
             UPDATE freshen_items SET state = v.state, attempts = v.attempts, reason = v.reason, \
             updated_at = $1 FROM v \
             WHERE freshen_items.run_id = $2 AND freshen_items.seq = v.seq \
             AND freshen_items.state = 'pending' AND freshen_items.seq IN (SELECT seq FROM v) \
             AND (freshen_items.lease_owner IS NULL OR freshen_items.lease_owner = $4) \
             RETURNING freshen_items.seq",
            self.json_rows(3)
        )
    }

    /// Writes a batch of records in one statement: `$1` refreshed_at, `$2` the
    /// records as a JSON array of `[seq, key, value...]` (the mapped columns'
    /// values in `api.response` order, each cast to the column's kind), and on
    /// SQLite `$3` the run. Returns the key, as text, of every row it wrote, so
    /// the checkpoint can check that each record's update touched exactly one.
    ///
    /// The key is compared by the column's own rules (see `keys`): on SQLite with
    /// the value the plan kept (`freshen_items.key_value`, found by the item's
    /// seq), on PostgreSQL as the key's text cast to the column's type.
    fn update_records_sql(&self, kinds: &[ColumnKind]) -> String {
        // The key as the table holds it, read first, one lookup per record, so
        // the update then finds each row by its key's index (`table.key = v.k`).
        // With the key compared to an expression of the joined item instead,
        // SQLite walked the whole table for every batch (2,200 records/s, 447 ms
        // of CPU per 1,000 records at 100,000, against 9,000/s and 152 ms).
        let mut fields = vec![match self.backend {
            Backend::Sqlite => format!(
                "(SELECT {} FROM freshen_items AS freshen_i WHERE freshen_i.run_id = $3 \
                 AND freshen_i.seq = CAST(e.value ->> 0 AS BIGINT))",
                item_key(self.backend, self.key_kind, &self.key_column, "freshen_i")
            ),
            Backend::Postgres => format!("CAST(e.value ->> 1 AS {})", self.key_type()),
        }];
        fields.extend(
            kinds
                .iter()
                .enumerate()
                .map(|(i, k)| format!("CAST(e.value ->> {} AS {})", i + 2, sql_type(*k))),
        );
        let names: Vec<String> = (0..self.mapped.len()).map(|i| format!("c{i}")).collect();
        let mut sets: Vec<String> = self
            .mapped
            .iter()
            .zip(&names)
            .map(|(column, name)| format!("{column} = v.{name}"))
            .collect();
        sets.push(format!("{} = $1", self.refreshed_at));
        let (table, key) = (&self.table, &self.key);
        format!(
            "WITH v (k, {}) AS MATERIALIZED (SELECT {} FROM {}) UPDATE {table} SET {} \
             FROM v WHERE {table}.{key} = v.k RETURNING CAST({table}.{key} AS TEXT)",
            names.join(", "),
            fields.join(", "),
            self.json_rows(2),
            sets.join(", "),
        )
    }

    /// PostgreSQL: the type the key's text is cast to, the column's own.
    fn key_type(&self) -> String {
        self.key_column
            .pg_type
            .clone()
            .unwrap_or_else(|| sql_type(self.key_kind).to_owned())
    }
}

/// ` WHERE a AND b`, or nothing.
fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// An item's key (`alias.key`, text) as the key column compares it: on SQLite
/// the value the plan kept, in its own storage class (items planned before it
/// was kept: by the column's declared kind); on PostgreSQL the text cast to the
/// column's type.
fn item_key(backend: Backend, kind: ColumnKind, key: &KeyColumn, alias: &str) -> String {
    let by_kind = match kind {
        ColumnKind::Integer => format!("CAST({alias}.key AS BIGINT)"),
        _ => format!("{alias}.key"),
    };
    match (backend, &key.pg_type) {
        (Backend::Sqlite, _) => format!("COALESCE({alias}.key_value, {by_kind})"),
        (Backend::Postgres, Some(t)) => format!("CAST({alias}.key AS {t})"),
        (Backend::Postgres, None) => by_kind,
    }
}

/// The type a value of this kind is cast to, understood by SQLite and PostgreSQL.
fn sql_type(kind: ColumnKind) -> &'static str {
    match kind {
        ColumnKind::Integer => "BIGINT",
        ColumnKind::Real => "DOUBLE PRECISION",
        ColumnKind::Text => "TEXT",
        ColumnKind::Bool => "BOOLEAN",
    }
}
