//! This process's lease on its work: its row in `freshen_workers`, whose
//! heartbeat (on the database's clock) says it is alive. Its credit
//! reservations and its claims on items hold only while the lease does; once
//! the heartbeat is older than `lock.stale_after` the lease is lost for good,
//! and another process may take the work over and move the reservations into
//! the period's spent.
//!
//! So that a process suspended past its lease (SIGSTOP, a frozen VM, a long
//! GC-like stall of the host) cannot go on spending what it no longer holds,
//! every call first checks the lease on the local monotonic clock: it counts as
//! held for half of `stale_after` after the last heartbeat was sent. Past that
//! (the process was stopped, or cut off from the database), the call waits for a
//! heartbeat of its own; if the database refuses it, the process is fenced and
//! stops calling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

pub struct Lease {
    store: Arc<Store>,
    /// `host:pid`: the name of this process in `freshen_workers`.
    pub worker: String,
    stale_after: Duration,
    base: Instant,
    /// Until when (ms after `base`) the lease counts as held.
    valid_until_ms: AtomicU64,
    fenced: AtomicBool,
    /// One heartbeat at a time.
    renewing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("worker", &self.worker)
            .field("fenced", &self.fenced)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Registers this process for `run` and takes its lease. The holders of
    /// this host that are gone were marked dead by the funds read that comes
    /// first (`Store::funds`), so its first grant takes their reservations.
    pub async fn take(
        store: Arc<Store>,
        run: i64,
        worker: String,
        stale_after: Duration,
    ) -> Result<Arc<Lease>> {
        let sent = Instant::now();
        store.register(run, &worker).await?;
        let lease = Lease {
            store,
            worker,
            stale_after,
            base: sent,
            valid_until_ms: AtomicU64::new(0),
            fenced: AtomicBool::new(false),
            renewing: tokio::sync::Mutex::new(()),
        };
        lease.renewed(sent);
        Ok(Arc::new(lease))
    }

    fn renewed(&self, sent: Instant) {
        let until = sent.duration_since(self.base) + self.stale_after / 2;
        self.valid_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    fn held_now(&self) -> bool {
        let now = Instant::now().duration_since(self.base).as_millis() as u64;
        now < self.valid_until_ms.load(Ordering::Acquire)
    }

    /// Whether the database refused this process's heartbeat.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Before a call: true if the lease is held, renewing it first if it may
    /// have lapsed; false once fenced.
    pub async fn check(&self) -> bool {
        if self.held_now() {
            return true;
        }
        let _turn = self.renewing.lock().await;
        loop {
            if self.is_fenced() {
                return false;
            }
            if self.held_now() {
                return true;
            }
            if let Err(e) = self.renew().await {
                tracing::warn!("{e:#}; calls wait until the run's heartbeat is written");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// One heartbeat. False (and fenced from then on) if the database had
    /// already found the lease stale.
    async fn renew(&self) -> Result<bool> {
        let sent = Instant::now();
        let kept = self
            .store
            .lease_heartbeat(&self.worker, self.stale_after)
            .await?;
        if kept {
            self.renewed(sent);
        } else if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                "this process's heartbeat went stale (it was suspended, or cut off from the \
                 database, for longer than lock.stale_after): another may have taken its work \
                 over, so it makes no more calls"
            );
        }
        Ok(kept)
    }

    /// Keeps the heartbeat fresh until `stop`; cancels `fenced` if the lease is lost.
    pub async fn keep(self: Arc<Self>, stop: CancellationToken, fenced: CancellationToken) {
        let every = (self.stale_after / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let renewed = {
                let _turn = self.renewing.lock().await;
                self.renew().await
            };
            match renewed {
                Ok(true) => {}
                Ok(false) => {
                    fenced.cancel();
                    return;
                }
                Err(e) => tracing::warn!(
                    "{e:#}; this run's claims and credits lapse if it stays cut off past \
                     lock.stale_after"
                ),
            }
        }
    }
}
