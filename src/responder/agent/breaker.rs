//! The circuit breaker of one agent: after a run of failed calls it fails further calls at once
//! for a cool-down, so a dead agent costs a fast error instead of a timeout per turn.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::telemetry::metrics::METRICS;

/// Failures in a row that open the breaker, unless the settings say otherwise.
pub const BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker refuses calls before it lets one trial call through.
pub const BREAKER_COOLDOWN: Duration = Duration::from_secs(10);

/// Counts consecutive failures of one agent and opens after `threshold` of them.
///
/// Open, it refuses every call until `cooldown` has passed; then it is half-open: one trial call
/// goes through and the next cool-down starts at once, so a trial whose caller goes away cannot
/// leave the breaker stuck. A trial that succeeds closes the breaker; one that fails opens it again.
#[derive(Debug)]
pub(super) struct Breaker {
    /// The label of this agent in the metrics.
    name: String,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    /// While set and in the future, calls are refused.
    open_until: Option<Instant>,
}

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    Go,
    /// The breaker is open: refuse the call without contacting the agent.
    Refuse,
}

impl Breaker {
    pub(super) fn new(name: &str, threshold: u32, cooldown: Duration) -> Breaker {
        METRICS.agent_breaker_open.with_label_values(&[name]).set(0);
        METRICS.agent_breaker_opens.with_label_values(&[name]);
        Breaker { name: name.to_string(), threshold: threshold.max(1), cooldown, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain numbers, still consistent after a panic elsewhere.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks to make a call; past the cool-down, the first caller gets the trial call.
    pub(super) fn admit(&self) -> Admit {
        let mut state = self.lock();
        match state.open_until {
            Some(until) if Instant::now() < until => Admit::Refuse,
            Some(_) => {
                // Half-open: this call is the trial; the others wait for the next cool-down.
                state.open_until = Some(Instant::now() + self.cooldown);
                tracing::info!(agent = %self.name, "agent circuit breaker half-open: one trial call");
                Admit::Go
            }
            None => Admit::Go,
        }
    }

    /// The agent answered (a refusal counts: the agent is up), which closes the breaker.
    pub(super) fn succeeded(&self) {
        let mut state = self.lock();
        if state.open_until.take().is_some() {
            tracing::info!(agent = %self.name, "agent circuit breaker closed");
            METRICS.agent_breaker_open.with_label_values(&[&self.name]).set(0);
        }
        state.failures = 0;
    }

    /// The agent was down, failing or too slow.
    pub(super) fn failed(&self) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        // A failed trial (the breaker is already marked open) opens it again at once.
        if state.open_until.is_some() || state.failures >= self.threshold {
            if state.open_until.is_none() {
                tracing::warn!(agent = %self.name, failures = state.failures, cooldown = ?self.cooldown, "agent circuit breaker open");
            }
            state.open_until = Some(Instant::now() + self.cooldown);
            METRICS.agent_breaker_open.with_label_values(&[&self.name]).set(1);
            METRICS.agent_breaker_opens.with_label_values(&[&self.name]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_lets_one_trial_through() {
        let breaker = Breaker::new("unit", 2, Duration::from_millis(40));
        breaker.failed();
        assert_eq!(breaker.admit(), Admit::Go, "one failure is below the threshold");
        breaker.failed();
        assert_eq!(breaker.admit(), Admit::Refuse);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(breaker.admit(), Admit::Go, "the trial call");
        assert_eq!(breaker.admit(), Admit::Refuse, "only one trial");
        breaker.failed();
        assert_eq!(breaker.admit(), Admit::Refuse, "a failed trial opens it again");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(breaker.admit(), Admit::Go);
        breaker.succeeded();
        assert_eq!(breaker.admit(), Admit::Go);
        breaker.failed();
        assert_eq!(breaker.admit(), Admit::Go, "a success resets the count");
    }
}
