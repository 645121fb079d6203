//! `chatkit-loadtest`: drives local chatkit-gateway replicas with many virtual clients and viewers and reports
//! throughput, latency and fan-out.

mod agent_echo;
mod chaos;
mod cli;
mod fanout;
mod idle;
mod mixed;
mod multi;
mod replicas;
mod report;
mod scenario;
mod sse;
mod viewers;

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    // The echo agent is a server, not a load: it has its own options, read before the load's.
    if std::env::args().nth(1).as_deref() == Some("agent-echo") {
        return agent_echo_main();
    }
    let args = Args::parse();
    // Each scenario checks its own options before anything starts.
    let plan = match args.scenario {
        Scenario::Fanout => args.fanout_shape().map(Plan::Fanout),
        Scenario::Mixed => args.mixed_shape().map(Plan::Mixed),
        Scenario::Idle => args.idle_shape().map(|spread| Plan::Idle(idle::IdleShape(spread))),
        _ => args.single_endpoint().map(Plan::Requests),
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(message) => {
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
    let header = args.user_header.clone();
    // Set when `--check-store` found the store or the viewers short of what the run promised.
    let mut check_failed = false;
    let result = match plan {
        Plan::Fanout(shape) => runtime.block_on(fanout::run(shape, header, args.timeout)).map(|report| {
            let measured = report.measured();
            (report.table(), report.json_line(), measured)
        }),
        Plan::Idle(shape) => runtime.block_on(idle::run(shape, header, args.timeout)).map(|report| {
            let measured = report.measured();
            (report.table(), report.json_line(), measured)
        }),
        Plan::Mixed(shape) => runtime.block_on(mixed::run(shape, header, args.timeout)).map(|(report, checked)| {
            let measured = report.measured();
            let (mut table, mut json_line) = (report.table(), report.json_line());
            if let Some(checked) = checked {
                table.push_str(&checked.table());
                // The JSON line is one flat object: the check's fields go in before its closing brace.
                if json_line.ends_with('}') {
                    json_line.pop();
                    json_line.push(',');
                    json_line.push_str(&checked.json_fields());
                    json_line.push('}');
                }
                check_failed = !checked.passed();
            }
            (table, json_line, measured)
        }),
        Plan::Requests(endpoint) => {
            let admin_key = match args
                .admin_key
                .as_deref()
                .map(|key| hyper::header::HeaderValue::from_str(&format!("Bearer {key}")))
            {
                Some(Ok(value)) => Some(value),
                Some(Err(_)) => {
                    eprintln!("chatkit-loadtest: --admin-key is not valid in a header");
                    return ExitCode::from(2);
                }
                None => None,
            };
            let target = Target {
                endpoint,
                user_header: header,
                admin_key,
                timeout: args.timeout,
                scenario: args.scenario,
                connections: AtomicU64::new(0),
            };
            runtime.block_on(run(&args, target)).map(|report| (report.table(), report.json_line(), report.ok > 0))
        }
    };
    let (table, json_line, measured) = match result {
        Ok(result) => result,
        Err(message) => {
            eprintln!("chatkit-loadtest: {message}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        eprint!("{table}");
        println!("{json_line}");
    } else {
        print!("{table}");
    }
    // A run that measured nothing (no request succeeded; no viewer opened or nothing was answered) should fail a script.
    if !measured {
        eprintln!("chatkit-loadtest: nothing was measured (no success, or no viewer open)");
        return ExitCode::FAILURE;
    }
    if check_failed {
        eprintln!("chatkit-loadtest: the store check failed (see its table)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Options of `chatkit-loadtest agent-echo`.
#[derive(Parser)]
#[command(name = "chatkit-loadtest agent-echo")]
struct AgentEchoArgs {
    /// Loopback port to listen on.
    #[arg(long)]
    port: u16,

    /// Milliseconds to wait before answering each `respond`, as a model that thinks would; the
    /// chaos run uses it so that its turns last long enough to be caught mid-way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    delay_ms: u64,
}

/// Runs the echo agent (see `agent_echo`) until the process is stopped.
fn agent_echo_main() -> ExitCode {
    let args = AgentEchoArgs::parse_from(std::env::args().skip(1));
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
        .and_then(|runtime| runtime.block_on(agent_echo::serve(args.port, Duration::from_millis(args.delay_ms))));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("chatkit-loadtest: {message}");
            ExitCode::FAILURE
        }
    }
}

/// What the options ask for, checked.
enum Plan {
    Requests(cli::Endpoint),
    Fanout(cli::FanoutShape),
    Mixed(cli::MixedShape),
    Idle(idle::IdleShape),
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
    // The servers' CPU time over exactly the measured window.
    let pids = args.server_pids.clone();
    let server_cpu = tokio::spawn(async move {
        if pids.is_empty() {
            return None;
        }
        tokio::time::sleep_until(phases.measure_from).await;
        let from = replicas::cpu_seconds_of(&pids)?;
        tokio::time::sleep_until(phases.end).await;
        Some(replicas::cpu_seconds_of(&pids)? - from)
    });
    while let Some(joined) = clients.join_next().await {
        joined.map_err(|e| format!("a client failed: {e}"))?;
    }
    let server_cpu = server_cpu.await.map_err(|e| format!("the CPU sampler failed: {e}"))?;
    if server_cpu.is_none() && !args.server_pids.is_empty() {
        eprintln!("chatkit-loadtest: a --server-pid process was not there to read its CPU time");
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
        server_cpu,
    };
    Ok(Report::new(run, total))
}
