//! The idle scenario: viewer streams on threads across replicas that open and are then only held for `--duration`,
//! with nothing sent, so that what an idle viewer costs a gateway (its resident memory, read by `idle.sh` around the
//! run, and the CPU time of its heartbeats) can be measured. Several processes share a large count, since each
//! holds one socket per stream.

use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};

use crate::cli::Spread;
use crate::multi::{self, Load, Net, Progress, Thread, Viewer};
use crate::report::IdleReport;

/// The idle run: its spread, nothing more.
pub struct IdleShape(pub Spread);

/// Runs the whole scenario and reports it; an error means setup failed and nothing was measured.
pub async fn run(
    shape: IdleShape,
    user_header: HeaderName,
    timeout: std::time::Duration,
) -> Result<IdleReport, String> {
    let finished = multi::run(&shape, user_header, timeout).await?;
    let open = finished.threads.iter().map(Thread::viewers_total).sum();
    Ok(IdleReport::new(finished.summary, open, finished.stats, finished.server_cpu))
}

impl Load for IdleShape {
    const NAME: &'static str = "idle";
    const SENDING: &'static str = "holding";
    const SENDS: &'static str = "nothing";
    const START: &'static str = "holding them idle";

    type Book = ();
    type Seen = ();
    type SendPhase = ();

    fn spread(&self) -> &Spread {
        &self.0
    }

    fn send_phase(&self) -> String {
        format!("held idle for {:?}", self.0.duration)
    }

    async fn prepare(_: &Net, _: u32, _: usize, _: &HeaderValue, _: &str) -> Result<(), String> {
        Ok(())
    }

    async fn send(&self, _: &Arc<Net>, _: &Arc<Vec<Thread<()>>>) {
        tokio::time::sleep(self.0.duration).await;
    }

    /// Nothing is sent, so any event on an idle stream is one too many.
    fn observe(viewer: &mut Viewer<Self>, _: &[u8], _: u64) {
        viewer.shard().other_events += 1;
    }

    fn deliveries(_: &Progress) -> String {
        "no deliveries due".into()
    }
}
