//! The table's run lock while a run holds it: its heartbeat, the statements
//! a stop must not wait for, and its release.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{LockMode, Store};

/// The lock this process holds on the table, kept fresh until released.
pub struct Held {
    store: Arc<Store>,
    holder: String,
    /// The workers of a joined run share the lock.
    mode: LockMode,
    stale_after: Duration,
    tasks: [JoinHandle<()>; 2],
}

impl Held {
    /// Keeps the lock `holder` has just taken: its heartbeat, and once `stop`
    /// is cancelled, statements waiting for another session's lock cancelled.
    pub fn keep(
        store: Arc<Store>,
        holder: String,
        mode: LockMode,
        stale_after: Duration,
        stop: &CancellationToken,
    ) -> Held {
        let tasks = [
            tokio::spawn(keep_lock(
                store.clone(),
                holder.clone(),
                stale_after,
                mode,
                stop.clone(),
            )),
            tokio::spawn(unblock_when_stopped(store.clone(), stop.clone())),
        ];
        Held {
            store,
            holder,
            mode,
            stale_after,
            tasks,
        }
    }

    /// Releases the lock (a joined run's: only the last worker out), and
    /// closes the store.
    pub async fn release(self, worker: &str) {
        for task in &self.tasks {
            task.abort();
        }
        let store = &self.store;
        let unlocked = match (self.mode, store.postgres()) {
            (LockMode::Shared, Some(pg)) => {
                let last = pg
                    .unlock_if_last(&self.holder, worker, self.stale_after)
                    .await;
                store.release().await;
                last.map(|_| ())
            }
            _ => store.unlock(&self.holder).await,
        };
        if let Err(e) = unlocked {
            tracing::warn!("{e:#}; the next run takes the lock over once this process has ended");
        }
        store.close().await;
    }
}

/// Refreshes the lock's heartbeat; if another run took the lock over (this one
/// looked dead: suspended, or cut off from the database), stops this one. The
/// workers of a joined run share the lock: if the last one out released it as
/// this one came in, it is taken again.
async fn keep_lock(
    store: Arc<Store>,
    holder: String,
    stale_after: Duration,
    mode: LockMode,
    stop: CancellationToken,
) {
    loop {
        tokio::time::sleep(stale_after / 4).await;
        let kept = match store.heartbeat(&holder).await {
            // A solo run whose row was taken over stops; a joined run's row
            // may have been released by the last worker out as this one came.
            Ok(false) if mode == LockMode::Shared => store
                .lock(&holder, stale_after, mode)
                .await
                .map(|taken| taken.is_ok()),
            kept => kept,
        };
        match kept {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("another run took over the lock of this table: stopping");
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!("cannot refresh the run lock: {e:#}"),
        }
    }
}

/// Once the run stops, cancels its statements that wait for another session's
/// lock (PostgreSQL), every second: a SIGTERM does not wait out that session.
async fn unblock_when_stopped(store: Arc<Store>, stop: CancellationToken) {
    stop.cancelled().await;
    loop {
        match store.cancel_lock_waits().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "stopping: cancelled {n} statement(s) waiting for another session's lock"
            ),
            Err(e) => tracing::debug!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
