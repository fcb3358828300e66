//! What a run is asked to do, every flag already checked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::selection::Selection;
use crate::store::Store;

/// What to run, with every flag already checked.
pub struct Plan {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub selection: Selection,
    /// `--join`: one of a run's workers (the store is PostgreSQL).
    pub join: bool,
    /// `--new`: plan a new run even if one with this selection is unfinished.
    pub new: bool,
    /// `--strict`: NULL or shared keys refuse the plan instead of being skipped.
    pub strict: bool,
    /// `--max-credits`.
    pub max_credits: Option<i64>,
    /// `--pace-until`, a time still to come.
    pub pace_until: Option<jiff::Timestamp>,
    /// `--metrics-file` and how often it is written.
    pub metrics: Option<(PathBuf, Duration)>,
}
