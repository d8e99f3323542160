//! Runs `examples/cluster.rs` as a user would: three nodes in three OS processes over loopback
//! (`--no-mdns`: no multicast from tests), a small workload, and checks that it reports
//! convergence and no lost message, and exits 0.
//!
//! The binary is found next to this test's own (`target/<profile>/deps/<test>` ->
//! `target/<profile>/examples/cluster`). Plain `cargo test` builds the examples first;
//! `cargo test --test cluster_example` does not, so the test runs `cargo build --example
//! cluster` (a no-op when the binary is up to date).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest the example may take; its own `--timeout` is shorter, so it speaks first.
const LIMIT: Duration = Duration::from_secs(25);

fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent() // deps
        .and_then(|deps| deps.parent()) // target/<profile>
        .expect("the test binary lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("cluster{}", std::env::consts::EXE_SUFFIX));
    // Plain `cargo test` has built the examples already, but `cargo test --test
    // cluster_example` builds this test alone: make sure the binary is there and up to date
    // (a no-op when it is) with the same cargo, profile and target directory.
    let profile = profile_dir.file_name().and_then(|p| p.to_str());
    let target_dir = profile_dir.parent();
    if let (Some(profile), Some(target_dir)) = (profile, target_dir) {
        let profile = if profile == "debug" { "dev" } else { profile };
        let built = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--example",
                "cluster",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        if !matches!(&built, Ok(s) if s.success()) {
            eprintln!("cargo build --example cluster: {built:?}; using what is there");
        }
    }
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --example cluster`",
        binary.display()
    );
    binary
}

/// Reads a pipe to its end on a thread; the text comes out of the returned channel.
fn collect(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).ok();
        tx.send(String::from_utf8_lossy(&bytes).into_owned()).ok();
    });
    rx
}

/// The value of `  key: value` in the summary.
fn field<'a>(summary: &'a str, key: &str) -> Option<&'a str> {
    summary
        .lines()
        .find_map(|line| line.trim().strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[test]
fn three_nodes_converge_and_deliver_every_broadcast_once_in_order() {
    let binary = example_binary();
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args(["--nodes", "3", "--no-mdns"])
        .args(["--processes", "8", "--groups", "4", "--broadcasts", "50"])
        .args(["--seed", "7", "--timeout", "18s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the cluster example");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));

    // The example's stdout ends when it exits (its nodes write to their own pipes).
    let out = match stdout.recv_timeout(LIMIT) {
        Ok(out) => out,
        Err(_) => {
            child.kill().ok();
            child.wait().ok();
            let err = stderr
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_default();
            panic!("the example did not finish within {LIMIT:?}; stderr:\n{err}");
        }
    };
    let status = child.wait().expect("wait for the example");
    // Its nodes inherit its stderr: that pipe ends when the last of them has exited.
    let err = stderr
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| "(stderr still open: a node outlived the example)".to_owned());
    eprintln!("{out}{err}the example took {:?}", started.elapsed());

    assert!(
        status.success(),
        "exit status {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let converged = field(&out, "converged").unwrap_or("(missing)");
    assert!(
        converged.starts_with("yes"),
        "converged: {converged}\n{out}"
    );
    for key in ["lost", "duplicated", "out of order", "unexpected"] {
        assert_eq!(field(&out, key), Some("0"), "{key}\n{out}");
    }
    let expected: u64 = field(&out, "expected deliveries")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(expected > 0, "no delivery was expected\n{out}");
    assert_eq!(
        field(&out, "delivered"),
        Some(expected.to_string().as_str())
    );
    assert_eq!(field(&out, "messages sent"), Some("150"), "{out}");
    assert_eq!(field(&out, "result"), Some("ok"), "{out}");
}

/// Kills the example when the test ends, also when it fails (its nodes follow: their stdin
/// closes with it).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // It may have exited already; either way it is gone after the wait.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// `GET path` over HTTP/1.0; the status line and the body.
fn http_get(url: &str) -> (String, String) {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the metrics server");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// With `--metrics` every node serves its Prometheus metrics and its health, and `--hold`
/// keeps them up after the run: scraped then, the three nodes agree on the scope. The scope
/// comes from the examples' commented file (`--config examples/procgroups.toml`).
#[test]
fn every_node_serves_its_metrics_and_health() {
    use std::io::BufRead;

    let binary = example_binary();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/procgroups.toml");
    let mut child = KillOnDrop(
        Command::new(binary)
            .args(["--nodes", "3", "--no-mdns", "--metrics", "127.0.0.1:0"])
            .args(["--processes", "4", "--groups", "2", "--broadcasts", "10"])
            .args(["--seed", "11", "--timeout", "15s", "--hold", "10s"])
            .args(["--config", config])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the cluster example"),
    );
    let stdout = std::io::BufReader::new(child.0.stdout.take().expect("stdout"));
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    let urls: Vec<String> = loop {
        let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            panic!("no `holding` line within {LIMIT:?}:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.strip_prefix("holding the nodes") {
            let (_, urls) = rest
                .split_once("(metrics: ")
                .expect("the metrics addresses");
            break urls
                .trim_end_matches(')')
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        }
        seen.push(line);
    };
    assert_eq!(urls.len(), 3, "{urls:?}");
    let mut members = Vec::new();
    for url in &urls {
        let (status, body) = http_get(url);
        assert!(status.contains("200"), "{url}: {status}");
        let gauge = |name: &str| -> f64 {
            let key = format!("procgroups_{name}{{scope=\"cluster:work\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{url}: no {key}in\n{body}"))
        };
        assert_eq!(gauge("peers"), 2.0, "{url}");
        assert_eq!(gauge("health"), 0.0, "{url}");
        members.push(gauge("members"));
        let (status, body) = http_get(&url.replace("/metrics", "/health"));
        assert!(status.contains("200"), "{url}: {status} {body}");
        assert_eq!(body.trim(), "cluster:work: healthy");
    }
    assert!(
        members[0] > 0.0 && members.iter().all(|m| *m == members[0]),
        "{members:?}"
    );
}
