//! The states a run and an item can be in, as types: each is stored as its
//! `as_str` text in `freshen_runs.status` and `freshen_items.state`, read back
//! with `FromStr`, and shown as that text by `status`, `report`, the summary
//! and the metrics.

use std::fmt;
use std::str::FromStr;

/// A run's status in `freshen_runs.status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Planned, not yet started (what a new run's row says).
    #[default]
    Planned,
    /// Working, or left by a process that stopped without saying why (killed):
    /// the next run resumes it.
    Running,
    /// Every item is resolved.
    Complete,
    /// Drained with items still pending; the next run resumes them.
    Stopped,
    /// Stopped by a signal; the next run resumes it.
    Interrupted,
    /// Stopped at `--max-credits`.
    Budget,
    /// Stopped because the period's credits are spent.
    OutOfCredits,
    /// Stopped by a vendor outage longer than `breaker.max_outage`.
    Outage,
    /// Stopped by the vendor's long wait (a quota's window past
    /// `retry.max_delay`); the next run after it resumes it.
    Quota,
    /// Stopped by an error (the database's, the vendor's key, ...); the next
    /// run resumes it once the cause is fixed.
    Error,
    /// Left unfinished by a newer run of the same selection (`--new`).
    Superseded,
}

impl RunStatus {
    pub const ALL: [RunStatus; 11] = [
        RunStatus::Planned,
        RunStatus::Running,
        RunStatus::Complete,
        RunStatus::Stopped,
        RunStatus::Interrupted,
        RunStatus::Budget,
        RunStatus::OutOfCredits,
        RunStatus::Outage,
        RunStatus::Quota,
        RunStatus::Error,
        RunStatus::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planned => "planned",
            RunStatus::Running => "running",
            RunStatus::Complete => "complete",
            RunStatus::Stopped => "stopped",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Budget => "budget",
            RunStatus::OutOfCredits => "out_of_credits",
            RunStatus::Outage => "outage",
            RunStatus::Quota => "quota",
            RunStatus::Error => "error",
            RunStatus::Superseded => "superseded",
        }
    }

    /// Whether the run is over for good: nothing resumes it.
    pub fn is_final(self) -> bool {
        matches!(self, RunStatus::Complete | RunStatus::Superseded)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<RunStatus, UnknownState> {
        find(RunStatus::ALL, RunStatus::as_str, "run status", text)
    }
}

impl serde::Serialize for RunStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An item's state in `freshen_items.state`. The SQL that selects pending
/// items names `'pending'` in its text; this type is the Rust side's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemState {
    /// Not resolved yet (claimed by a worker of a joined run or not).
    Pending,
    /// Its values are written.
    Done,
    /// Resolved without values; `reason` says why.
    Failed,
    /// Resolved without values: the vendor knows nothing of it (an
    /// `[[api.answers]]` rule's `no_match`); `reason` says what it answered.
    NoMatch,
}

impl ItemState {
    pub const ALL: [ItemState; 4] = [
        ItemState::Pending,
        ItemState::Done,
        ItemState::Failed,
        ItemState::NoMatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Pending => "pending",
            ItemState::Done => "done",
            ItemState::Failed => "failed",
            ItemState::NoMatch => "no_match",
        }
    }
}

impl fmt::Display for ItemState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ItemState {
    type Err = UnknownState;

    fn from_str(text: &str) -> Result<ItemState, UnknownState> {
        find(ItemState::ALL, ItemState::as_str, "item state", text)
    }
}

/// The state of `all` whose text is `text`.
fn find<S: Copy, const N: usize>(
    all: [S; N],
    as_str: fn(S) -> &'static str,
    what: &'static str,
    text: &str,
) -> Result<S, UnknownState> {
    all.into_iter()
        .find(|s| as_str(*s) == text)
        .ok_or_else(|| UnknownState {
            what,
            text: text.to_owned(),
        })
}

/// A state read back from freshen's tables that this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown {what} {text:?} in freshen's tables: written by a newer freshen? \
     Run that version, or `freshen run --new` to start over"
)]
pub struct UnknownState {
    what: &'static str,
    text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_as_itself() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        for s in ItemState::ALL {
            assert_eq!(s.as_str().parse::<ItemState>(), Ok(s));
        }
    }

    #[test]
    fn an_unknown_state_is_an_error_that_names_it() {
        let e = "paused".parse::<RunStatus>().unwrap_err();
        assert!(e.to_string().contains("run status \"paused\""), "{e}");
        assert!("claimed".parse::<ItemState>().is_err());
    }

    #[test]
    fn only_complete_and_superseded_runs_are_final() {
        let finals: Vec<_> = RunStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, [RunStatus::Complete, RunStatus::Superseded]);
    }
}
