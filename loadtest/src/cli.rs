//! Command-line options, and the checks that keep the load on this machine.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hyper::header::HeaderName;
use hyper::Uri;

/// Drives `POST /chatkit` and the viewer streams of local chatkit-gateway replicas and reports throughput, latency
/// and fan-out.
#[derive(Debug, Parser)]
#[command(name = "chatkit-loadtest", version)]
pub struct Args {
    /// Base URL of the gateway; `/chatkit` is appended when the URL has no path. The fanout
    /// and mixed scenarios take one per replica (repeat the flag or separate the URLs with commas).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    pub url: Vec<String>,

    /// What each virtual client does over and over.
    #[arg(long, value_enum, default_value_t = Scenario::Turn)]
    pub scenario: Scenario,

    /// Number of virtual clients, each with its own user and connection (not used by fanout and mixed).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Length of the measured run, such as `10s`, `500ms` or `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// A server process (repeat for several replicas) whose CPU time, user and system from `/proc/<PID>/stat`, is
    /// reported: over the measured window per successful request for the request scenarios; over the send phase and
    /// the drain per delivery for fanout; over the hold per viewer and second for idle.
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pids: Vec<u32>,

    /// Time spent loading before measuring; its results are discarded (not used by fanout and mixed).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Limit on one request, from sending it to the end of its body; for fanout and mixed also
    /// the limit on opening one viewer stream, from connecting to its response head.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Header that names the user; client n sends `load-<n>`.
    #[arg(long, default_value = "x-user-id", value_parser = parse_header_name)]
    pub user_header: HeaderName,

    /// Request scenarios: the gateway's admin key. Each client then first makes a session for its
    /// user through `POST /v1/chatkit/sessions` (a rate limit no run reaches) and sends its client
    /// secret as `Authorization: Bearer` instead of the user header, for a gateway with
    /// `CHATKIT_AUTH=session`.
    #[arg(long, value_name = "KEY")]
    pub admin_key: Option<String>,

    /// Runtime worker threads; by default one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Print one JSON object line on stdout (the human table then goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Fanout and mixed: threads the viewers watch and the updates or turns go to [default: 1000
    /// for fanout, 100 for mixed].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub threads: Option<u32>,

    /// Fanout and mixed: viewer streams, spread evenly over the threads and in turn over the
    /// replicas [default: 10000 for fanout, 1000 for mixed].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_VIEWERS as i64))]
    pub viewers: Option<u32>,

    /// Mixed: writers, each sending turns back to back for `--duration`, to the threads and the
    /// replicas in turn [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_WRITERS as i64))]
    pub writers: Option<u32>,

    /// Mixed: each writer sends all its turns through one replica (writer `w` through replica
    /// `w mod replicas`) instead of through the replicas in turn, so that a paused replica holds
    /// up only its own writers; the chaos run uses it.
    #[arg(long)]
    pub pin_writers: bool,

    /// Fanout: thread updates sent per second, for `--duration` [default: 200].
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Fanout and mixed: how long viewers keep listening after the last update or turn has been
    /// answered [default: 2s].
    #[arg(long, value_parser = parse_duration)]
    pub drain: Option<Duration>,

    /// Fanout and mixed: viewer streams being opened at once [default: 256].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub open_concurrency: Option<u32>,

    /// Fanout and mixed: limit on the whole setup, creating the threads and opening every viewer
    /// [default: 120s].
    #[arg(long, value_parser = parse_duration)]
    pub setup_timeout: Option<Duration>,

    /// Mixed: after the run, read every thread from this PostgreSQL database (the replicas' own) and check that each
    /// turn a client saw complete is stored exactly once, in order and not interleaved with another, and that every
    /// viewer received each message or a `resync`; prints that check's table and fails when it does not hold.
    #[arg(long, value_name = "POSTGRES_URL")]
    pub check_store: Option<String>,
}

/// The most viewer streams one run opens; each takes a socket in this process and one in a gateway.
pub const MAX_VIEWERS: u32 = 50_000;
/// The most writers one mixed run starts; each holds up to one connection per replica.
pub const MAX_WRITERS: u32 = 1_000;
/// The longest send phase a fanout or mixed run may ask for.
pub const MAX_FANOUT_DURATION: Duration = Duration::from_secs(600);
/// The longest drain a fanout or mixed run may ask for.
pub const MAX_DRAIN: Duration = Duration::from_secs(60);

/// What the fanout and mixed runs share: the replicas, the threads and viewers spread over them, and the timing of
/// setup, send phase and drain, with every default filled in and every bound checked.
#[derive(Clone, Debug)]
pub struct Spread {
    pub replicas: Vec<Endpoint>,
    pub threads: u32,
    pub viewers: u32,
    pub duration: Duration,
    pub drain: Duration,
    pub open_concurrency: u32,
    pub setup_timeout: Duration,
    /// The `--server-pid` processes whose CPU time the run reports.
    pub server_pids: Vec<u32>,
}

/// What a fanout run does: the spread, and thread updates at a steady rate.
#[derive(Clone, Debug)]
pub struct FanoutShape {
    pub spread: Spread,
    pub rate: f64,
}

/// What a mixed run does: the spread, and writers sending turns back to back.
#[derive(Clone, Debug)]
pub struct MixedShape {
    pub spread: Spread,
    pub writers: u32,
    /// Whether each writer keeps to one replica (`--pin-writers`).
    pub pin_writers: bool,
    /// The database to check the run against afterwards (`--check-store`).
    pub check_store: Option<String>,
}

impl Args {
    /// The options given that only the fanout and mixed scenarios read, by their flags.
    fn multi_replica_options(&self) -> Vec<&'static str> {
        [
            ("--threads", self.threads.is_some()),
            ("--viewers", self.viewers.is_some()),
            ("--writers", self.writers.is_some()),
            ("--rate", self.rate.is_some()),
            ("--drain", self.drain.is_some()),
            ("--open-concurrency", self.open_concurrency.is_some()),
            ("--setup-timeout", self.setup_timeout.is_some()),
            ("--check-store", self.check_store.is_some()),
            ("--pin-writers", self.pin_writers),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// The one endpoint of the request scenarios, refusing fanout and mixed options and extra URLs.
    pub fn single_endpoint(&self) -> Result<Endpoint, String> {
        let misplaced = self.multi_replica_options();
        if !misplaced.is_empty() {
            return Err(format!(
                "{} belong to --scenario fanout or mixed, not {}",
                misplaced.join(", "),
                self.scenario.name()
            ));
        }
        match self.url.as_slice() {
            [url] => endpoint(url),
            urls => Err(format!("--scenario {} takes one --url, got {}", self.scenario.name(), urls.len())),
        }
    }

    /// The spread of a fanout or mixed run, with `threads` and `viewers` unless the options say otherwise.
    fn spread(&self, threads: u32, viewers: u32) -> Result<Spread, String> {
        let name = self.scenario.name();
        let mut replicas = Vec::with_capacity(self.url.len());
        for url in &self.url {
            let endpoint = endpoint(url)?;
            if endpoint.path != "/chatkit" {
                return Err(format!(
                    "--url `{url}`: the {name} scenario needs the gateway's own paths, so give the URL without a path"
                ));
            }
            if replicas.contains(&endpoint) {
                return Err(format!("--url `{url}` is given twice"));
            }
            replicas.push(endpoint);
        }
        if self.duration > MAX_FANOUT_DURATION {
            return Err(format!("--duration is at most {MAX_FANOUT_DURATION:?} for {name}"));
        }
        if self.drain.is_some_and(|drain| drain > MAX_DRAIN) {
            return Err(format!("--drain is at most {MAX_DRAIN:?}"));
        }
        Ok(Spread {
            replicas,
            threads: self.threads.unwrap_or(threads),
            viewers: self.viewers.unwrap_or(viewers),
            duration: self.duration,
            drain: self.drain.unwrap_or(Duration::from_secs(2)),
            open_concurrency: self.open_concurrency.unwrap_or(256),
            setup_timeout: self.setup_timeout.unwrap_or(Duration::from_secs(120)),
            server_pids: self.server_pids.clone(),
        })
    }

    /// The fanout run the options describe.
    pub fn fanout_shape(&self) -> Result<FanoutShape, String> {
        if self.writers.is_some() || self.check_store.is_some() || self.pin_writers {
            return Err(
                "--writers, --pin-writers and --check-store belong to --scenario mixed; fanout sends updates at --rate"
                    .into(),
            );
        }
        Ok(FanoutShape { spread: self.spread(1000, 10_000)?, rate: self.rate.unwrap_or(200.0) })
    }

    /// The idle run the options describe: viewers that open and then only listen for `--duration`.
    pub fn idle_shape(&self) -> Result<Spread, String> {
        if self.writers.is_some() || self.check_store.is_some() || self.pin_writers || self.rate.is_some() {
            return Err(
                "--writers, --pin-writers, --check-store and --rate belong to other scenarios; idle sends nothing"
                    .into(),
            );
        }
        self.spread(100, 1000)
    }

    /// The mixed run the options describe.
    pub fn mixed_shape(&self) -> Result<MixedShape, String> {
        if self.rate.is_some() {
            return Err("--rate belongs to --scenario fanout; mixed writers send turns back to back".into());
        }
        let check_store = self.check_store.clone();
        if check_store
            .as_deref()
            .is_some_and(|url| !url.starts_with("postgres://") && !url.starts_with("postgresql://"))
        {
            return Err("--check-store takes a postgres:// URL".into());
        }
        Ok(MixedShape {
            spread: self.spread(100, 1000)?,
            writers: self.writers.unwrap_or(8),
            pin_writers: self.pin_writers,
            check_store,
        })
    }
}

/// The workloads the tool knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// One user message and its streamed answer per request, in a thread made at start.
    Turn,
    /// `threads.list` with a limit of 20 over threads made at start.
    List,
    /// `threads.create`, streamed to its end.
    Create,
    /// Viewer streams on threads across replicas, a steady rate of title and status
    /// updates, and the time each update takes to reach every viewer.
    Fanout,
    /// Viewer streams on threads across replicas, writers sending turns back to back, and
    /// the time each user message takes to reach every viewer of its thread.
    Mixed,
    /// Viewer streams on threads across replicas that open and then only listen (heartbeats)
    /// for `--duration`: what an idle viewer costs a gateway.
    Idle,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Turn => "turn",
            Scenario::List => "list",
            Scenario::Create => "create",
            Scenario::Fanout => "fanout",
            Scenario::Mixed => "mixed",
            Scenario::Idle => "idle",
        }
    }

    /// Whether responses are event streams, and so have a time to first byte worth reporting.
    pub fn is_streaming(self) -> bool {
        !matches!(self, Scenario::List)
    }
}

/// Parses `10s`, `250ms`, `1.5s`, `2m`, `100us` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as 10s or 500ms"))?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{text}`; use us, ms, s, m or h")),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|e| format!("`{text}`: {e}"))
}

/// Parses an update rate: a positive number of updates per second, at most 10,000.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 10_000.0 => Ok(rate),
        _ => Err(format!("`{text}` is not a rate between 0 and 10000 updates per second")),
    }
}

fn parse_header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.as_bytes()).map_err(|_| format!("`{text}` is not a valid header name"))
}

/// Where the load goes: a loopback socket, and what the request line and `Host` header say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The `Host` header, as the URL spelled it.
    pub authority: String,
    /// Path and query of the request line: `/chatkit` unless the URL names another path.
    pub path: String,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// Turns `--url` into the endpoint to post to, refusing anything that is not plain HTTP on loopback.
///
/// A load generator aimed at someone else's server is an attack, so the check is
/// strict: only 127.0.0.0/8, `localhost` and `[::1]` pass, and the socket it
/// returns is the one every connection goes to, so nothing resolves differently later.
pub fn endpoint(url: &str) -> Result<Endpoint, String> {
    let refuse = |why: &str| Err(format!("--url `{url}` {why}"));
    let Ok(uri) = url.parse::<Uri>() else { return refuse("is not a valid URL") };
    if uri.scheme_str() != Some("http") {
        return refuse("must start with http:// (the target is a local gateway, without TLS)");
    }
    let Some(authority) = uri.authority() else { return refuse("has no host") };
    if authority.as_str().contains('@') {
        return refuse("must not carry credentials");
    }
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(80);
    let not_loopback = "is not a loopback address; only 127.0.0.0/8, localhost and [::1] are allowed";
    let addr = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_loopback() => SocketAddr::new(IpAddr::V4(ip), port),
        Ok(IpAddr::V6(ip)) if ip == Ipv6Addr::LOCALHOST => SocketAddr::new(IpAddr::V6(ip), port),
        Ok(_) => return refuse(not_loopback),
        Err(_) if host.eq_ignore_ascii_case("localhost") => {
            resolve_localhost(port).map_err(|e| format!("--url `{url}`: {e}"))?
        }
        Err(_) => return refuse(not_loopback),
    };
    let path = match uri.path_and_query() {
        Some(pq) if !(pq.path() == "/" && pq.query().is_none()) => pq.as_str().to_string(),
        _ => "/chatkit".to_string(),
    };
    Ok(Endpoint { addr, authority: authority.as_str().to_string(), path })
}

/// Looks `localhost` up and keeps only a loopback answer, in case the resolver is configured oddly.
fn resolve_localhost(port: u16) -> Result<SocketAddr, String> {
    let addrs = ("localhost", port).to_socket_addrs().map_err(|e| format!("cannot resolve localhost: {e}"))?;
    addrs
        .into_iter()
        .find(|addr| addr.ip().is_loopback())
        .ok_or_else(|| "localhost resolves to no loopback address".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_hosts_only() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3:1/",
            "http://localhost:9000",
            "http://LOCALHOST:9000",
            "http://[::1]:8080",
        ] {
            assert!(endpoint(ok).is_ok(), "{ok} should pass");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://128.0.0.1:8080",
            "http://example.com",
            "http://localhost.example.com",
            "http://[::2]:8080",
            "http://[::ffff:8.8.8.8]:80",
            "http://0.0.0.0:8080",
            "https://127.0.0.1:8443",
            "http://user:pw@127.0.0.1:8080",
            "127.0.0.1:8080",
            "not a url",
        ] {
            assert!(endpoint(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn appends_the_endpoint_path_only_when_missing() {
        let plain = endpoint("http://127.0.0.1:8080").unwrap();
        assert_eq!(plain.to_string(), "http://127.0.0.1:8080/chatkit");
        assert_eq!(plain.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(endpoint("http://127.0.0.1:8080/").unwrap().path, "/chatkit");
        assert_eq!(
            endpoint("http://127.0.0.2/api/chatkit?x=1").unwrap().to_string(),
            "http://127.0.0.2/api/chatkit?x=1"
        );
        let v6 = endpoint("http://[::1]:9000").unwrap();
        assert_eq!((v6.addr, v6.authority.as_str()), ("[::1]:9000".parse().unwrap(), "[::1]:9000"));
        assert!(endpoint("http://localhost:9000").unwrap().addr.ip().is_loopback());
    }

    #[test]
    fn idle_holds_viewers_sends_nothing_and_reads_the_server_cpu() {
        let args = Args::parse_from([
            "chatkit-loadtest",
            "--scenario",
            "idle",
            "--viewers",
            "5000",
            "--server-pid",
            "42",
            "--drain",
            "0s",
        ]);
        let spread = args.idle_shape().unwrap();
        assert_eq!((spread.threads, spread.viewers, spread.drain), (100, 5000, Duration::ZERO));
        assert_eq!(spread.server_pids, vec![42]);
        let rate = Args::parse_from(["chatkit-loadtest", "--scenario", "idle", "--rate", "5"]);
        assert!(rate.idle_shape().is_err(), "idle sends no updates");
    }

    #[test]
    fn fanout_takes_several_replicas_and_its_own_options_only() {
        let args = Args::parse_from([
            "chatkit-loadtest",
            "--scenario",
            "fanout",
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--url",
            "http://localhost:3",
            "--rate",
            "50",
        ]);
        let shape = args.fanout_shape().unwrap();
        assert_eq!(shape.spread.replicas.len(), 3);
        assert_eq!((shape.spread.threads, shape.spread.viewers, shape.rate), (1000, 10_000, 50.0));
        assert!(args.single_endpoint().is_err(), "the request scenarios take one URL");

        let with_path = Args::parse_from(["chatkit-loadtest", "--scenario", "fanout", "--url", "http://127.0.0.1:1/x"]);
        assert!(with_path.fanout_shape().is_err());
        let twice = Args::parse_from([
            "chatkit-loadtest",
            "--scenario",
            "fanout",
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:1",
        ]);
        assert!(twice.fanout_shape().is_err());
        let misplaced =
            Args::parse_from(["chatkit-loadtest", "--scenario", "turn", "--viewers", "5", "--writers", "2"]);
        let refused = misplaced.single_endpoint().unwrap_err();
        assert!(refused.starts_with("--viewers, --writers belong to"), "{refused}");
        let writers = Args::parse_from(["chatkit-loadtest", "--scenario", "fanout", "--writers", "2"]);
        assert!(writers.fanout_shape().is_err(), "fanout has no writers");
        assert!(Args::try_parse_from(["chatkit-loadtest", "--rate", "0"]).is_err());
        assert!(Args::try_parse_from(["chatkit-loadtest", "--viewers", "50001"]).is_err());
    }

    #[test]
    fn mixed_takes_several_replicas_writers_and_no_rate() {
        let args = Args::parse_from([
            "chatkit-loadtest",
            "--scenario",
            "mixed",
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--writers",
            "3",
            "--drain",
            "1s",
        ]);
        let shape = args.mixed_shape().unwrap();
        assert_eq!(shape.spread.replicas.len(), 2);
        assert_eq!((shape.spread.threads, shape.spread.viewers, shape.writers), (100, 1000, 3));
        assert_eq!(shape.spread.drain, Duration::from_secs(1));
        assert!(!shape.pin_writers, "writers go through the replicas in turn unless pinned");
        let pinned = Args::parse_from(["chatkit-loadtest", "--scenario", "mixed", "--pin-writers"]);
        assert!(pinned.mixed_shape().unwrap().pin_writers);
        let pinned_fanout = Args::parse_from(["chatkit-loadtest", "--scenario", "fanout", "--pin-writers"]);
        assert!(pinned_fanout.fanout_shape().is_err(), "fanout has no writers to pin");
        let with_rate = Args::parse_from(["chatkit-loadtest", "--scenario", "mixed", "--rate", "5"]);
        assert!(with_rate.mixed_shape().is_err());
        let long_drain = Args::parse_from(["chatkit-loadtest", "--scenario", "mixed", "--drain", "2m"]);
        assert!(long_drain.mixed_shape().is_err());
        assert!(Args::try_parse_from(["chatkit-loadtest", "--writers", "0"]).is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
