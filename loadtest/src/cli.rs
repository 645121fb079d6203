//! Command-line options, and the checks that keep the load on this machine.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use hyper::header::HeaderName;
use hyper::Uri;

/// Drives `POST /chatkit` of a local chatkit-gateway and reports throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "chatkit-loadtest", version)]
pub struct Args {
    /// Base URL of the gateway; `/chatkit` is appended when the URL has no path.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// What each virtual client does over and over.
    #[arg(long, value_enum, default_value_t = Scenario::Turn)]
    pub scenario: Scenario,

    /// Number of virtual clients, each with its own user and connection.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Length of the measured run, such as `10s`, `500ms` or `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time spent loading before measuring; its results are discarded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Limit on one request, from sending it to the end of its body.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Header that names the user; client n sends `load-<n>`.
    #[arg(long, default_value = "x-user-id", value_parser = parse_header_name)]
    pub user_header: HeaderName,

    /// Runtime worker threads; by default one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Print one JSON object line on stdout (the human table then goes to stderr).
    #[arg(long)]
    pub json: bool,
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
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Turn => "turn",
            Scenario::List => "list",
            Scenario::Create => "create",
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
