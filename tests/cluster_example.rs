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
