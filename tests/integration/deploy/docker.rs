//! The Dockerfile: its stages, its user, and its healthcheck against a live gateway.

use super::*;

/// The Dockerfile's instructions, continuation lines joined, comments left out.
fn dockerfile() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// The HEALTHCHECK command of the Dockerfile (exec form).
fn healthcheck_command() -> Vec<String> {
    let instruction = dockerfile().into_iter().find(|i| i.starts_with("HEALTHCHECK ")).expect("a HEALTHCHECK");
    let (_, command) = instruction.split_once(" CMD ").expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(command.trim()).expect("the HEALTHCHECK command in exec (JSON) form")
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let instructions = dockerfile();
    let stages: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, i)| i.starts_with("FROM ")).map(|(n, _)| n).collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build, runtime) = (&instructions[..*stages.last().unwrap()], &instructions[*stages.last().unwrap()..]);
    assert!(build.iter().any(|i| i.contains("cargo build --release --locked")), "a locked release build");
    assert!(runtime.iter().any(|i| i.starts_with("COPY --from=")), "the runtime copies the binary from the build");
    assert!(!runtime.iter().any(|i| i.contains("cargo ")), "no toolchain in the runtime stage");

    let user = runtime.iter().rev().find_map(|i| i.strip_prefix("USER ")).expect("a USER in the runtime stage");
    let user = user.split(':').next().unwrap();
    assert!(user != "root" && user != "0", "the runtime user must not be root: {user}");

    // Rust version: at least the crate's rust-version.
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let needed =
        manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).expect("rust-version").trim_matches('"');
    let arg = instructions.iter().find_map(|i| i.strip_prefix("ARG RUST_VERSION=")).expect("ARG RUST_VERSION");
    let version = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(version(arg) >= version(needed), "RUST_VERSION {arg} < rust-version {needed}");

    // The port it exposes is the one CHATKIT_BIND names.
    let env = runtime.iter().filter(|i| i.starts_with("ENV ")).cloned().collect::<Vec<_>>().join(" ");
    let bind = env.split_whitespace().find_map(|w| w.strip_prefix("CHATKIT_BIND=")).expect("ENV CHATKIT_BIND");
    let port = bind.parse::<SocketAddr>().expect("CHATKIT_BIND").port();
    assert!(runtime.iter().any(|i| *i == format!("EXPOSE {port}")), "EXPOSE {port}");
    assert_eq!(bind, format!("0.0.0.0:{port}"));

    // What the build copies exists, and the ignore file lets it in (and nothing bulky).
    let ignore = read("Dockerfile.dockerignore");
    let ignore: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(ignore.first(), Some(&"*"), "the ignore file starts by leaving everything out (target/ is large)");
    for copy in build.iter().filter_map(|i| i.strip_prefix("COPY ")) {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(Path::new(ROOT).join(source).exists(), "COPY {source}: missing from the repository");
            assert!(
                ignore.iter().any(|l| l.strip_prefix('!').is_some_and(|allowed| {
                    let allowed = allowed.trim_end_matches('/');
                    allowed == *source || allowed.starts_with(&format!("{source}/"))
                })),
                "COPY {source}: not let in by deploy/Dockerfile.dockerignore"
            );
        }
    }
    assert!(runtime.iter().any(|i| i.starts_with("ENTRYPOINT ") && i.contains("chatkit-gateway")));
    assert_eq!(healthcheck_command()[0], "bash");
}

/// The image's HEALTHCHECK, run here against a real gateway: healthy when /readyz answers 200,
/// unhealthy when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_asks_readyz() {
    let app = spawn_app();
    let command = healthcheck_command();
    let check = |bind: String| {
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .env("CHATKIT_BIND", bind)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the healthcheck");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut output = String::new();
                child.stderr.take().unwrap().read_to_string(&mut output).unwrap();
                return (status.success(), output);
            }
            assert!(Instant::now() < deadline, "the healthcheck hung");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (healthy, output) = check(format!("0.0.0.0:{}", app.addr.port()));
    assert!(healthy, "the healthcheck failed against a ready gateway: {output}");
    let closed = crate::common::free_port();
    let (healthy, _) = check(format!("0.0.0.0:{closed}"));
    assert!(!healthy, "the healthcheck passed with nothing listening");
    // And it reads the status line: a server answering 503 is unhealthy.
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        // Bounded: a healthcheck that never connects must not hang the test.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(error) => panic!("the healthcheck did not connect: {error}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").unwrap();
    });
    let (healthy, _) = check(format!("0.0.0.0:{port}"));
    assert!(!healthy, "the healthcheck passed on a 503");
    server.join().unwrap();
}
