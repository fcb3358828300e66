//! One worker of a joined run (`freshen run --join`, PostgreSQL): what it shares
//! with the run's other workers, through the database.
//!
//! - Items: claimed a small batch at a time (`FOR UPDATE SKIP LOCKED`); a claim
//!   lasts while the worker's heartbeat is fresh, so a dead worker's items go
//!   back to the queue after `lock.stale_after`.
//! - Rate: one token bucket per table at `limits.rate`, kept in the database as
//!   a theoretical arrival time and taken a few tokens at a time, so the sum of
//!   all workers' calls stays within the rate and its burst. A throttle seen by
//!   one worker pauses all of them.
//! - Credits: the one ledger every run spends from (`store::ledger`); a worker
//!   with nothing left to claim gives its unused credits back for the others.
//!
//! A `Fleet` is the pacer's [`Peers`]: the pacer takes the shared rate token
//! and tells the others of a throttle itself. Each worker keeps its own adaptive
//! concurrency, which answers to what its own calls see; the circuit breaker is
//! the fleet's (`engine::outage`).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::credits::Budget;
use crate::lease::Lease;
use crate::pacer::{Pacer, Peers};
use crate::store::{Item, PgStore, Store};

/// Time the shared bucket is asked for at once: a few tokens per round trip.
const PACE_BLOCK: Duration = Duration::from_millis(50);

pub struct Fleet {
    store: PgStore,
    /// `host:pid`.
    pub worker: String,
    pub run: i64,
    pub stale_after: Duration,
    interval_us: i64,
    burst: i64,
    block: i64,
    /// Tokens taken from the shared bucket, by the time each falls due.
    tokens: Mutex<VecDeque<Instant>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("worker", &self.worker)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// The worker's share of the run, as `run` sets it up.
pub struct Joined {
    pub worker: String,
    pub run: i64,
    pub stale_after: Duration,
    pub rate: f64,
    pub burst: u32,
}

impl Fleet {
    pub fn new(store: PgStore, j: Joined) -> Fleet {
        let interval_us = (1e6 / j.rate.max(1e-3)).round().max(1.0) as i64;
        let block = (PACE_BLOCK.as_secs_f64() * j.rate).ceil().clamp(1.0, 256.0) as i64;
        Fleet {
            store,
            worker: j.worker,
            run: j.run,
            stale_after: j.stale_after,
            interval_us,
            burst: i64::from(j.burst.max(1)),
            block,
            tokens: Mutex::new(VecDeque::new()),
        }
    }

    /// The table's store, with the operations only a joined run's workers use.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Waits for the next token of the shared bucket. While the database cannot
    /// be reached, waits for it (the caller's stop token ends the wait).
    async fn next_token(&self, pacer: &Pacer) {
        let due = {
            let mut tokens = self.tokens.lock().await;
            if tokens.is_empty() {
                let grant = loop {
                    match self
                        .store
                        .pace(self.block, self.interval_us, self.burst)
                        .await
                    {
                        Ok(grant) => break grant,
                        Err(e) => {
                            tracing::warn!("{e:#}; trying again in 1 s");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                };
                if grant.paused_us > 0 {
                    pacer.pause(Duration::from_micros(grant.paused_us as u64));
                }
                let open = pacer.outage_view().open;
                if grant.outage && !open {
                    // Another worker found the vendor down: this one's breaker
                    // follows before it sends into the outage (the caller
                    // checks it again once the token is due).
                    pacer.outage_from_fleet(true);
                    pacer.outage_hint();
                } else if grant.outage != open {
                    pacer.outage_hint();
                }
                let now = Instant::now();
                for i in 0..self.block {
                    let offset = grant.first_us + i * self.interval_us;
                    tokens.push_back(now + Duration::from_micros(offset.max(0) as u64));
                }
            }
            tokens.pop_front().expect("just filled")
        };
        tokio::time::sleep_until(due).await;
    }
}

impl Peers for Fleet {
    fn token<'a>(&'a self, pacer: &'a Pacer) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.next_token(pacer))
    }

    /// A throttle seen by this worker holds every worker of the table.
    fn throttled(&self, pause: Duration) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.pause_fleet(pause).await {
                tracing::warn!("{e:#}");
            }
        });
    }
}

/// Who works a run: this process alone, or it and the other workers of a
/// joined run (`--join`). The engine asks it where the two differ (the next
/// items, leaving) and never branches on which it is; the pacer meets the other
/// workers through [`Peers`] ([`Pacer::join`]).
#[derive(Debug, Clone)]
pub enum Crew {
    Alone,
    Joined(Arc<Fleet>),
}

/// Items read from the queue per query, alone on a run.
const FETCH: i64 = 512;
/// Items a worker of a joined run claims at once: small, so the others get
/// work too and a dead worker strands few.
const CLAIM: i64 = 32;
/// How often a worker with nothing to claim looks again while others hold items.
const CLAIM_POLL: Duration = Duration::from_millis(500);

impl Crew {
    pub fn is_joined(&self) -> bool {
        matches!(self, Crew::Joined(_))
    }

    /// The next items to work, in queue order; none when the run has none
    /// left. Alone: the pending items after `after`. A worker of a joined run
    /// claims a small batch no live worker holds, and while others hold the
    /// rest, waits (giving its unused credits back: they may be what one of
    /// them lacks); if one of them dies, its items come back to the queue.
    pub async fn next_items(
        &self,
        store: &Store,
        run: i64,
        after: i64,
        budget: &Budget,
    ) -> anyhow::Result<Vec<Item>> {
        let Crew::Joined(fleet) = self else {
            return store.pending_after(run, after, FETCH).await;
        };
        loop {
            let claimed = fleet
                .store
                .claim(run, &fleet.worker, fleet.stale_after, CLAIM)
                .await?;
            if !claimed.is_empty() || !store.has_pending(run).await? {
                return Ok(claimed);
            }
            budget.give_back_unused().await?;
            tokio::time::sleep(CLAIM_POLL).await;
        }
    }

    /// This process leaves the run: a worker of a joined run gives back the
    /// items it claimed and did not finish (the others may still be at work),
    /// and every process gives back its unused credits, unless it failed with
    /// answers unwritten (their credits may have been billed: they count as
    /// spent once its heartbeat is stale) or was fenced (its reservation is
    /// another's to settle). Returns how many other workers of the run are
    /// still live.
    pub async fn leave(
        &self,
        store: &Store,
        lease: &Lease,
        run: i64,
        clean: bool,
    ) -> anyhow::Result<i64> {
        let fenced = lease.is_fenced();
        if let Crew::Joined(fleet) = self
            && !fenced
        {
            fleet.store.release_claims(run, &fleet.worker).await?;
        }
        if clean && !fenced {
            store.leave(&lease.worker).await?;
        }
        match self {
            Crew::Joined(fleet) => {
                fleet
                    .store
                    .other_live_workers(run, &fleet.worker, fleet.stale_after)
                    .await
            }
            Crew::Alone => Ok(0),
        }
    }
}
