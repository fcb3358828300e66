//! The circuit breaker's state in the database, beside the shared pause: what
//! `status` shows of an outage, and for the workers of a joined run one breaker
//! for all of them.
//!
//! Alone, a run only writes its breaker's openings and closings (with the
//! cause) for `status`. Joined, each worker's breaker follows the fleet's: the
//! first worker whose breaker opens opens the table's outage; the others see it
//! with their next rate tokens and stop calling; one worker at a time takes the
//! probe from the database (`next_probe_ms`), and the first probe that is
//! answered closes the outage for every worker. Four workers through an outage
//! send about as many calls into it as one does.
//!
//! Each pass writes this worker's own change first and only then reads the
//! fleet's, so a worker whose probe was just answered closes the outage before
//! it could read it as still open.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::fleet::{Crew, Fleet};
use crate::pacer::{OutageView, Pacer};
use crate::store::Store;

/// How often a worker whose breaker is open looks at the fleet's outage: the
/// most a closed outage keeps the other workers waiting.
const OPEN_POLL: Duration = Duration::from_millis(100);
/// How often a worker of a joined run looks while its breaker is closed (its
/// rate tokens tell it sooner, about every 50 ms).
const CLOSED_POLL: Duration = Duration::from_secs(1);
/// The first probe of the fleet's outage, from its start, and how long a
/// worker holds the probe while its answer is out (a worker that dies with it
/// gives it up after this).
const FIRST_PROBE: Duration = Duration::from_millis(200);
const PROBE_HOLD: Duration = Duration::from_secs(30);
/// The fleet's probe schedule: from [`FIRST_PROBE`], doubling with each failed
/// probe, at most this far apart (as one worker's breaker does).
const PROBE_EVERY_AT_MOST: Duration = Duration::from_millis(750);

/// Keeps the database's outage in step with this process's breaker until
/// `stop`. Joined (`crew`), the breaker follows the fleet's and probes only
/// when it takes the probe.
pub async fn share(store: Arc<Store>, pacer: Arc<Pacer>, crew: Crew, stop: CancellationToken) {
    let fleet = match &crew {
        Crew::Joined(fleet) => Some(fleet.clone()),
        Crew::Alone => None,
    };
    let mut was_open = false;
    // While this worker holds the fleet's probe: the failed probes counted
    // when it took it.
    let mut holding: Option<u64> = None;
    loop {
        let news = pacer.outage_news();
        let view = pacer.outage_view();
        if let Err(e) = pass(
            &store,
            &pacer,
            fleet.as_deref(),
            &view,
            &mut was_open,
            &mut holding,
        )
        .await
        {
            tracing::debug!("{e:#}");
        }
        let poll = if view.open { OPEN_POLL } else { CLOSED_POLL };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = news => {}
            _ = tokio::time::sleep(poll), if fleet.is_some() => {}
        }
    }
    // Alone, nobody else is in the outage once this run ends.
    if fleet.is_none()
        && was_open
        && let Err(e) = store.outage_closed().await
    {
        tracing::debug!("{e:#}");
    }
}

async fn pass(
    store: &Store,
    pacer: &Pacer,
    fleet: Option<&Fleet>,
    view: &OutageView,
    was_open: &mut bool,
    holding: &mut Option<u64>,
) -> anyhow::Result<()> {
    // This worker's own change first.
    if view.open && !*was_open {
        store
            .outage_opened(view.cause.as_deref(), FIRST_PROBE)
            .await?;
    } else if !view.open && *was_open {
        store.outage_closed().await?;
        *holding = None;
    }
    *was_open = view.open;
    let Some(fleet) = fleet else {
        return Ok(());
    };
    if let Some(at) = *holding
        && view.open
        && !view.probing
        && view.probes_failed > at
    {
        // Its probe failed: the next is the fleet's, from whoever asks first.
        let wait = FIRST_PROBE
            .saturating_mul(1 << view.probes_failed.min(8))
            .min(PROBE_EVERY_AT_MOST);
        fleet.store().probe_failed(wait).await?;
        *holding = None;
    }
    // Then the fleet's.
    let fleet = fleet
        .store()
        .fleet_outage(holding.is_none() && !view.probing, PROBE_HOLD)
        .await?;
    if fleet.open != view.open {
        pacer.outage_from_fleet(fleet.open);
        *was_open = fleet.open;
    }
    if fleet.probe {
        pacer.grant_probe();
        *holding = Some(pacer.outage_view().probes_failed);
    }
    Ok(())
}
