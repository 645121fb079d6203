//! Logs and metrics.

pub mod metrics;

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber; `RUST_LOG` wins over the configured filter.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    // A second call (several apps in one test process) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}
