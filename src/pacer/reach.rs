//! Whether the vendor has been reached at all in this run, and why a call last
//! failed. A wrong or unreachable `api.base_url` (a refused connection, a name
//! that does not resolve) looks like an outage to the breaker, which would
//! probe it for `retry.max_outage` (30 minutes) and never say why. A vendor that
//! has not answered once in this run while every call fails to connect is not
//! down but not there: after `retry.connect_grace` the run stops (exit 4) with a
//! message naming `api.base_url` and the cause.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Reach {
    state: Mutex<State>,
    grace: Duration,
}

#[derive(Default)]
struct State {
    /// Some answer (any HTTP status) arrived in this run.
    answered: bool,
    /// The first failure to connect, while nothing has answered.
    first_failure: Option<Instant>,
    /// The last failure's reason, for the outage line, the summary and the stop.
    cause: Option<String>,
}

impl Reach {
    pub fn new(grace: Duration) -> Reach {
        Reach {
            state: Mutex::new(State::default()),
            grace,
        }
    }

    /// An answer arrived: the vendor is there, whatever it said.
    pub fn answered(&self) {
        let mut s = self.state.lock().expect("reach lock");
        s.answered = true;
        s.first_failure = None;
    }

    /// A call failed with `reason`; `connect` when no connection was made.
    pub fn failed(&self, reason: &str, connect: bool, now: Instant) {
        let mut s = self.state.lock().expect("reach lock");
        s.cause = Some(reason.to_owned());
        if connect && !s.answered {
            s.first_failure.get_or_insert(now);
        }
    }

    /// The last failure's reason, if any.
    pub fn cause(&self) -> Option<String> {
        self.state.lock().expect("reach lock").cause.clone()
    }

    /// Nothing has answered in this run, and calls have failed to connect for
    /// `retry.connect_grace`.
    pub fn unreachable(&self, now: Instant) -> bool {
        let s = self.state.lock().expect("reach lock");
        !s.answered
            && s.first_failure
                .is_some_and(|t| now.duration_since(t) >= self.grace)
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_vendor_never_reached_is_unreachable_after_the_grace() {
        let r = Reach::new(Duration::from_secs(60));
        let t0 = Instant::now();
        r.failed("connection failed: Connection refused", true, t0);
        assert!(!r.unreachable(t0 + Duration::from_secs(59)));
        assert!(r.unreachable(t0 + Duration::from_secs(60)));
        assert_eq!(
            r.cause().as_deref(),
            Some("connection failed: Connection refused")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_vendor_that_answered_once_is_down_not_unreachable() {
        let r = Reach::new(Duration::from_secs(60));
        let t0 = Instant::now();
        r.answered();
        r.failed("connection failed: Connection refused", true, t0);
        assert!(!r.unreachable(t0 + Duration::from_secs(3600)));
        // Server errors are answers from a vendor that is there.
        let r = Reach::new(Duration::from_secs(60));
        r.failed("500 Internal Server Error", false, t0);
        assert!(!r.unreachable(t0 + Duration::from_secs(3600)));
    }
}
