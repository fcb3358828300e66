//! freshen's integration tests: one binary (as ripgrep and just do), driving the
//! real `freshen` binary against the in-process sandbox vendor.

mod answers;
mod config_errors;
mod credits;
mod cron;
mod database_faults;
mod dialects;
mod estimate;
mod flow;
mod harness;
mod hostile;
mod integrity;
mod join;
mod layout;
mod ledger;
mod lock;
mod report;
mod resume;
mod rules;
mod run;
mod security;
mod status;
mod templates;
mod vendor;
mod windows;
