//! `chatkit-loadtest`: drives a local chatkit-gateway with many virtual clients and reports throughput and latency.

mod cli;
mod fanout;
mod report;
mod scenario;
mod sse;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use cli::{Args, Scenario};
use report::{Report, RunShape, Stats};
use scenario::{Phases, Target, VirtualClient};

/// Upper bound on the number of result shards, each a lock a group of clients records into.
///
/// Sharing a few shards keeps memory flat (a shard's two histograms take about 370 KiB) while
/// keeping lock contention low, since a request takes far longer than a record.
const MAX_SHARDS: usize = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    // The fanout scenario checks its own options; the others take one endpoint.
    let endpoint = match args.scenario {
        Scenario::Fanout => None,
        _ => match args.single_endpoint() {
            Ok(endpoint) => Some(endpoint),
            Err(message) => {
                eprintln!("chatkit-loadtest: {message}");
                return ExitCode::from(2);
            }
        },
    };
    let fanout_shape = match (&endpoint, args.fanout_shape()) {
        (Some(_), _) => None,
        (None, Ok(shape)) => Some(shape),
        (None, Err(message)) => {
            eprintln!("chatkit-loadtest: {message}");
            return ExitCode::from(2);
        }
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = args.workers {
        runtime.worker_threads(usize::from(workers));
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chatkit-loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(shape) = fanout_shape {
        return match runtime.block_on(fanout::run(shape, args.user_header.clone(), args.timeout)) {
            Ok(report) => {
                if args.json {
                    eprint!("{}", report.table());
                    println!("{}", report.json_line());
                } else {
                    print!("{}", report.table());
                }
                // A run in which no viewer opened or no update went through measured nothing.
                if !report.measured() {
                    eprintln!("chatkit-loadtest: nothing was measured (no viewer open or no update answered)");
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("chatkit-loadtest: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(endpoint) = endpoint else { return ExitCode::FAILURE };
    let target = Target {
        endpoint,
        user_header: args.user_header.clone(),
        timeout: args.timeout,
        scenario: args.scenario,
        connections: AtomicU64::new(0),
    };
    match runtime.block_on(run(&args, target)) {
        Ok(report) => {
            if args.json {
                eprint!("{}", report.table());
                println!("{}", report.json_line());
            } else {
                print!("{}", report.table());
            }
            // A run without a single success measured nothing, and a script should notice.
            if report.ok == 0 {
                eprintln!("chatkit-loadtest: no request succeeded");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("chatkit-loadtest: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Sets every client up, starts them together, and collects their results.
async fn run(args: &Args, target: Target) -> Result<Report, String> {
    let concurrency = args.concurrency;
    let scenario = args.scenario;
    eprintln!(
        "chatkit-loadtest: {} with {concurrency} clients against {}; setting up",
        scenario.name(),
        target.endpoint
    );
    let target = Arc::new(target);
    let shard_count = (concurrency as usize).min(MAX_SHARDS);
    let shards: Arc<Vec<Mutex<Stats>>> = Arc::new((0..shard_count).map(|_| Mutex::new(Stats::default())).collect());
    let (ready_tx, mut ready_rx) = mpsc::channel::<(u32, Result<(), String>)>(concurrency as usize);
    let (start_tx, start_rx) = watch::channel::<Option<Phases>>(None);

    let mut clients = JoinSet::new();
    for index in 0..concurrency {
        let target = Arc::clone(&target);
        let shards = Arc::clone(&shards);
        let ready_tx = ready_tx.clone();
        let mut start_rx = start_rx.clone();
        clients.spawn(async move {
            let mut client = match VirtualClient::new(index, target) {
                Ok(client) => client,
                Err(e) => {
                    let _ = ready_tx.send((index, Err(e))).await;
                    return;
                }
            };
            let setup = client.setup().await;
            let failed = setup.is_err();
            let _ = ready_tx.send((index, setup)).await;
            drop(ready_tx);
            if failed {
                return;
            }
            // The sender goes away without a start only when the run is abandoned.
            let phases = start_rx.wait_for(Option::is_some).await.map_or(None, |phases| *phases);
            let Some(phases) = phases else { return };
            client.run(phases, &shards[index as usize % shards.len()]).await;
        });
    }
    drop(ready_tx);

    // All clients finish their setup before the clock starts, so that setup
    // traffic never overlaps the warm-up or the measurement.
    let mut ready = 0;
    while ready < concurrency {
        match ready_rx.recv().await {
            Some((_, Ok(()))) => ready += 1,
            Some((index, Err(e))) => return Err(format!("setup of client load-{index} failed: {e}")),
            None => return Err("a client stopped during setup".into()),
        }
    }

    let now = Instant::now();
    let phases = Phases { measure_from: now + args.warmup, end: now + args.warmup + args.duration };
    eprintln!("chatkit-loadtest: warming up for {:?}, then measuring for {:?}", args.warmup, args.duration);
    start_tx.send_replace(Some(phases));
    while let Some(joined) = clients.join_next().await {
        joined.map_err(|e| format!("a client failed: {e}"))?;
    }

    let mut total = Stats::default();
    for shard in shards.iter() {
        total.merge(&shard.lock().unwrap_or_else(|poison| poison.into_inner()));
    }
    let run = RunShape {
        scenario,
        concurrency,
        duration: args.duration,
        warmup: args.warmup,
        connections: target.connections.load(Ordering::Relaxed),
    };
    Ok(Report::new(run, total))
}
