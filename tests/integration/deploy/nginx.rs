//! The nginx configuration: `nginx -t`, its SSE settings, and real streams through it to three replicas.

use super::*;

#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

/// Parses nginx configuration syntax: directives, quoted arguments, blocks, comments.
fn parse_nginx(text: &str) -> Vec<Directive> {
    #[derive(Debug, PartialEq)]
    enum Token {
        Word(String),
        End,
        Open,
        Close,
    }
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' => tokens.push(Token::End),
            '{' => tokens.push(Token::Open),
            '}' => tokens.push(Token::Close),
            '"' | '\'' => {
                let mut word = String::new();
                while let Some(next) = chars.next() {
                    match next {
                        '\\' => word.push(chars.next().expect("escape")),
                        q if q == c => break,
                        other => word.push(other),
                    }
                }
                tokens.push(Token::Word(word));
            }
            first => {
                let mut word = String::from(first);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, ';' | '{' | '}') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    fn block(tokens: &mut std::vec::IntoIter<Token>, nested: bool) -> Vec<Directive> {
        let mut directives = Vec::new();
        let mut words = Vec::new();
        while let Some(token) = tokens.next() {
            match token {
                Token::Word(word) => words.push(word),
                Token::End | Token::Open => {
                    assert!(!words.is_empty(), "nginx.conf: `;` or `{{` without a directive");
                    let name = words.remove(0);
                    let children = if token == Token::Open { block(tokens, true) } else { Vec::new() };
                    directives.push(Directive { name, args: std::mem::take(&mut words), block: children });
                }
                Token::Close => {
                    assert!(nested && words.is_empty(), "nginx.conf: unexpected `}}`");
                    return directives;
                }
            }
        }
        assert!(!nested && words.is_empty(), "nginx.conf: unclosed block or unterminated directive");
        directives
    }
    block(&mut tokens.into_iter(), false)
}

fn children<'a>(block: &'a [Directive], name: &str) -> Vec<&'a Directive> {
    block.iter().filter(|d| d.name == name).collect()
}

/// An nginx time (`1h`, `90s`, `60`) in seconds.
fn nginx_seconds(text: &str) -> u64 {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let n: u64 = text[..split].parse().unwrap_or_else(|_| panic!("bad nginx time {text}"));
    n * match &text[split..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => panic!("unsupported nginx time unit {other} in {text}"),
    }
}

/// A copy of deploy/nginx/nginx.conf for this machine: the compose service names of the
/// upstream (which only Docker's DNS resolves) become `upstreams`, in order, and with
/// `listen` the server listens there instead of port 80. Nothing else changes.
fn nginx_test_copy(upstreams: &[String], listen: Option<&str>) -> String {
    let original = read("nginx/nginx.conf");
    let gateways = gateway_services();
    assert_eq!(upstreams.len(), gateways.len());
    let port = gateway_port();
    let mut copy = original.clone();
    for (gateway, upstream) in gateways.iter().zip(upstreams) {
        let server = format!("server {gateway}:{port}");
        assert_eq!(original.matches(&server).count(), 1, "nginx.conf must list `{server}` once in its upstream");
        copy = copy.replace(&server, &format!("server {upstream}"));
    }
    if let Some(address) = listen {
        assert!(copy.contains("listen 80;"), "nginx.conf listens on port 80");
        copy = copy.replace("listen 80;", &format!("listen {address};"));
    }
    copy
}

/// Writes `config` into a fresh directory used as nginx's prefix.
fn nginx_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("nginx.conf"), config).expect("write nginx.conf");
    dir
}

fn nginx_command(dir: &Path) -> Command {
    let mut command = Command::new(nginx());
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null());
    command
}

#[test]
fn nginx_config_is_valid_and_made_for_sse() {
    let config = parse_nginx(&read("nginx/nginx.conf"));
    let http = children(&config, "http");
    assert_eq!(http.len(), 1, "one http block");
    let http = &http[0].block;

    // The upstream lists exactly the compose gateway services on their port.
    let upstreams = children(http, "upstream");
    assert_eq!(upstreams.len(), 1, "one upstream");
    let upstream = upstreams[0];
    let servers: Vec<String> = children(&upstream.block, "server").iter().map(|s| s.args[0].clone()).collect();
    let expected: Vec<String> = gateway_services().iter().map(|g| format!("{g}:{}", gateway_port())).collect();
    assert_eq!(servers, expected, "the upstream servers are the compose replicas");
    assert!(!children(&upstream.block, "keepalive").is_empty(), "keep-alive connections to the replicas");

    // The location that proxies to it streams: no buffering, HTTP/1.1 keep-alive,
    // read timeouts far past the heartbeat and the model's timeout.
    let servers = children(http, "server");
    assert_eq!(servers.len(), 1, "one server");
    let server = &servers[0].block;
    let proxied: Vec<&Directive> = children(server, "location")
        .into_iter()
        .filter(|location| children(&location.block, "proxy_pass").iter().any(|p| p.args.len() == 1))
        .collect();
    assert_eq!(proxied.len(), 1, "one location proxies to the replicas");
    let location = proxied[0];
    assert_eq!(children(&location.block, "proxy_pass")[0].args, [format!("http://{}", upstream.args[0])]);
    // A directive as the location sees it: its own, else inherited.
    let effective = |name: &str| -> Vec<&Directive> {
        for scope in [&location.block, server, http] {
            let found = children(scope, name);
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    };
    let value = |name: &str| -> String {
        let found = effective(name);
        assert_eq!(found.len(), 1, "{name} should be set once for the proxied location");
        found[0].args.join(" ")
    };
    assert_eq!(value("proxy_buffering"), "off");
    assert_eq!(value("proxy_request_buffering"), "off");
    assert_eq!(value("proxy_cache"), "off");
    assert_eq!(value("proxy_http_version"), "1.1");
    let headers: Vec<Vec<String>> = effective("proxy_set_header").iter().map(|d| d.args.clone()).collect();
    assert!(headers.contains(&vec!["Connection".into(), String::new()]), "Connection \"\" for upstream keep-alive");
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let seconds = nginx_seconds(&value(timeout));
        assert!(seconds >= 600, "{timeout} {seconds}s is too short for viewer streams");
    }

    // `nginx -t` on the copy with loopback upstreams (no DNS needed).
    let loopback: Vec<String> =
        (1..=gateway_services().len()).map(|i| format!("127.0.0.{i}:{}", gateway_port())).collect();
    let dir = nginx_dir(&nginx_test_copy(&loopback, None));
    let output = run_ok(nginx_command(dir.path()).arg("-t"));
    assert!(output.contains("test is successful"), "{output}");
}

/// An nginx master process, stopped (SIGQUIT, then SIGKILL) when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// What nginx logged: before its configuration was read (`-e`), and after (the
    /// configuration's `error_log /dev/stderr`).
    fn log(&self) -> String {
        ["error.log", "stderr.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: a graceful stop of the master and its workers.
        let _ = Command::new("kill").arg("-QUIT").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx with the deploy configuration in front of `upstreams`, on a free loopback port.
fn start_nginx(upstreams: &[String]) -> (Nginx, u16) {
    for _ in 0..5 {
        let port = crate::common::free_port();
        let dir = nginx_dir(&nginx_test_copy(upstreams, Some(&format!("127.0.0.1:{port}"))));
        let pid = dir.path().join("nginx.pid");
        let child = nginx_command(dir.path())
            .arg("-g")
            .arg(format!("daemon off; pid {};", pid.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("nginx's stderr"))
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (nginx, port);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                // Most likely the port was taken meanwhile: try another.
                eprintln!("nginx exited ({status}) on port {port}:\n{}", nginx.log());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("nginx did not start with the deploy configuration");
}

/// The compose topology on loopback: three replicas sharing a store and Redis, behind nginx
/// with deploy/nginx/nginx.conf. Turn streams and viewer streams (with their heartbeats) pass
/// through it as they happen; /metrics and the probes stay private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_pass_through_nginx_to_three_replicas() {
    nginx(); // fail early, with instructions, when it is missing
    let redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let replicas: Vec<TestApp> = (0..3)
        .map(|_| {
            let url = redis.url();
            spawn(Spawn {
                store: Some(store.clone()),
                configure: Box::new(move |c| {
                    c.fanout.redis_url = Some(Secret::new(url));
                    c.fanout.heartbeat_secs = 1;
                }),
                ..Default::default()
            })
        })
        .collect();
    for replica in &replicas {
        eventually("the replica is ready (Redis connected)", || async {
            let response = replica.client.get(replica.url("/readyz")).send().await;
            response.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    let upstreams: Vec<String> = replicas.iter().map(|r| format!("127.0.0.1:{}", r.addr.port())).collect();
    let (nginx, port) = start_nginx(&upstreams);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap();

    for private in ["/metrics", "/healthz", "/readyz"] {
        let status = client.get(format!("{base}{private}")).send().await.unwrap().status();
        assert_eq!(status, 404, "{private} must not be reachable through nginx");
    }
    assert_eq!(client.get(replicas[0].url("/metrics")).send().await.unwrap().status(), 200);

    // A history stream through nginx: heartbeats arrive one by one, so nothing buffers them.
    let mut history = viewer::open(&format!("{base}/chatkit/events"), "alice", None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while history.heartbeats == 0 && Instant::now() < deadline {
        assert!(history.next_within(Duration::from_millis(500)).await.is_none(), "no event yet");
    }
    assert!(history.heartbeats >= 1, "heartbeats (every second here) pass through nginx while the stream is open");

    // A turn through nginx: its stream arrives whole, and the history stream (on whichever
    // replica nginx picked) sees the new thread while it stays open.
    let create = request("threads.create", json!({"input": text_input("through nginx")}));
    let response = client.post(format!("{base}/chatkit")).header("x-user-id", "alice").json(&create).send().await;
    let response = response.expect("POST /chatkit through nginx");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&response.text().await.unwrap());
    assert_eq!(events[0]["type"], "thread.created", "{events:?}");
    let thread_id = str_of(&events[0]["thread"]["id"], "thread id").to_string();
    assert!(assistant_text(&events).contains("through nginx"), "{events:?}");
    let frames = history.until(|frame| frame.kind() == "thread.created").await;
    assert_eq!(frames.last().unwrap().data["thread"]["id"], thread_id.as_str());

    // A thread viewer through nginx sees the next turn's items live.
    let mut thread = viewer::open(&format!("{base}/chatkit/threads/{thread_id}/events"), "alice", None).await;
    let say = request("threads.add_user_message", json!({"thread_id": thread_id, "input": text_input("again")}));
    let response = client.post(format!("{base}/chatkit")).header("x-user-id", "alice").json(&say).send().await;
    assert!(assistant_text(&parse_sse(&response.unwrap().text().await.unwrap())).contains("again"));
    let frames = thread
        .until(|frame| frame.kind() == "thread.item.done" && frame.data["item"]["type"] == "assistant_message")
        .await;
    assert!(frames.iter().any(|f| f.data["item"]["type"] == "user_message"), "{frames:?}");
    let log = nginx.log();
    assert!(!log.contains("[error]") && !log.contains("[crit]"), "nginx logged errors:\n{log}");
}
