//! The errors that decide an exit code. Everything else travels as `anyhow::Error`
//! with context naming the file, key or record involved.

use std::fmt;

/// A problem the operator fixes by changing the configuration or the command line:
/// exit code 2. The message names the key or flag and says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for a `UsageError` inside an `anyhow::Result`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// True when the error, or anything in its chain, is a `UsageError`.
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<UsageError>())
}

/// No call can succeed as configured: the vendor refuses this client's calls
/// (401, 403: a wrong or expired key, an account without access), or most
/// answers fail (the contract guard: a changed schema). The run stops before
/// spending more: exit code 6.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// How an error ends the process: its exit code, and the status word the
/// summary and the metrics give it.
pub fn exit_of(err: &anyhow::Error) -> (Exit, &'static str) {
    if is_usage(err) {
        (Exit::Usage, "usage_error")
    } else if err.chain().any(|e| e.is::<Refused>()) {
        (Exit::Refused, "refused")
    } else {
        (Exit::Error, "error")
    }
}

/// A value that must never be printed: API tokens, database passwords.
/// `Debug` and `Display` show `(redacted)` (as xh does), so it cannot leak through
/// a log line, an error or a summary by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(redacted)")
    }
}

/// How a command ended, as the process's exit code. Documented in the README;
/// scripts and crontabs depend on these numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done: every selected record is refreshed or failed permanently.
    Complete = 0,
    /// An error freshen could not work around (database unreachable, say).
    Error = 1,
    /// A configuration or usage error; the message names the key or flag.
    Usage = 2,
    /// Stopped at the credit budget, or the vendor reported no credits left.
    Budget = 3,
    /// The vendor was down longer than `retry.max_outage`; checkpointed.
    Outage = 4,
    /// Another run of the same table holds the lock.
    Locked = 5,
    /// The vendor refused the credentials (401, 403), or most answers failed
    /// (`limits.max_failure_share`); the run resumes once the config is fixed.
    Refused = 6,
    /// Interrupted by SIGINT, SIGTERM or SIGHUP after checkpointing (or at once,
    /// on a second signal).
    Interrupted = 130,
}

impl Exit {
    /// Every exit code, in the README's order.
    pub const ALL: [Exit; 8] = [
        Exit::Complete,
        Exit::Error,
        Exit::Usage,
        Exit::Budget,
        Exit::Outage,
        Exit::Locked,
        Exit::Refused,
        Exit::Interrupted,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }
}
