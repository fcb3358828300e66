//! What a database error means for the run: a lost connection (retried) or a
//! refused write (explained).

/// Whether `e` says the database could not be reached or dropped the connection
/// (a restart, `pg_terminate_backend`, a network cut), rather than refused the
/// statement: worth waiting for and trying again, as nothing was committed
/// (the transaction either reached COMMIT and was acknowledged, or is rolled back).
pub fn is_disconnect(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            // Class 08 (connection exception), 57P01-57P03 (admin shutdown, crash
            // shutdown, cannot connect now).
            Some(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        })
}

/// A checkpoint that failed because the database's storage refused the write
/// (a read-only filesystem or file, a full disk, an I/O error) says so, and
/// what to do; other errors pass as they are.
pub fn explain_write_failure(e: anyhow::Error) -> anyhow::Error {
    const STORAGE: [&str; 4] = ["readonly", "read-only", "disk I/O error", "disk is full"];
    let storage = e.chain().any(|cause| {
        matches!(cause.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(db))
            if STORAGE.iter().any(|s| db.message().contains(s)))
    });
    if storage {
        e.context(
            "could not write to the database: its storage refused the write (a read-only \
             file or filesystem, a full disk, or a failing one). Nothing of this batch was \
             kept and every record written before it is whole; make the database writable \
             and rerun to resume",
        )
    } else {
        e
    }
}
