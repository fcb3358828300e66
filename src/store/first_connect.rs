//! The first connection to PostgreSQL, made by hand before the pool: the pool
//! retries a connection that fails until its 30 s acquire timeout and then says
//! only "pool timed out", so a closed port or a missing database would cost 30 s
//! of silence and say nothing of why. One connection, with a short timeout, says
//! it at once.

use std::time::Duration;

use anyhow::{Result, anyhow};

/// How long the first connection may take before the database is called unreachable.
const FIRST_CONNECT: Duration = Duration::from_secs(10);

/// Connects once to `url`; on failure, an error naming the database as `shown`
/// (engine, user, host), where its URL came from (`source`), and the cause once.
pub(super) async fn probe(url: &str, shown: &str, source: &str) -> Result<()> {
    let connect = <sqlx::AnyConnection as sqlx::Connection>::connect(url);
    let cause = match tokio::time::timeout(FIRST_CONNECT, connect).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            return Ok(());
        }
        Ok(Err(e)) => describe(&e),
        Err(_) => format!(
            "no answer within {} s: is the host right, and is a firewall dropping the port?",
            FIRST_CONNECT.as_secs()
        ),
    };
    Err(anyhow!(
        "cannot open the database {shown} ({source}): {cause}"
    ))
}

/// The cause of a failed connection, said once (sqlx's database errors repeat
/// their message in their source) and with what to check.
pub(super) fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.message().to_owned(),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens on that host and port; is PostgreSQL \
             running, and are the host and port right?"
                .to_owned()
        }
        sqlx::Error::Io(io) => format!("{io}"),
        other => other.to_string(),
    }
}
