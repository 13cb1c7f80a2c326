//! `serve`, `call`, `version` and `demo`, run as a user runs them.

use serde_json::Value as Json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flowee-cli"))
}

/// A `serve` process and the address it listens on; killed when dropped.
struct Serve {
    child: Child,
    addr: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    fn start(echo: bool) -> Serve {
        let mut cmd = bin();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if echo {
            cmd.arg("--echo");
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve starts");
        let addr = first
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Serve {
            child,
            addr,
            log: rx,
        }
    }

    /// Log lines until one contains `what` (or the timeout).
    fn wait_for(&self, what: &str) -> Vec<String> {
        let end = Instant::now() + Duration::from_secs(20);
        let mut lines = Vec::new();
        while Instant::now() < end {
            if let Ok(line) = self.log.recv_timeout(Duration::from_millis(100)) {
                let done = line.contains(what);
                lines.push(line);
                if done {
                    return lines;
                }
            }
        }
        panic!("no log line with {what:?}; got {lines:?}");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn call(addr: &str, args: &[&str]) -> Output {
    bin().arg("call").arg(addr).args(args).output().unwrap()
}

fn stdout_json(o: &Output) -> Json {
    serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
}

#[test]
fn call_against_an_echo_server() {
    let s = Serve::start(true);
    let o = call(
        &s.addr,
        &[
            "--service",
            "3",
            "--message",
            "2",
            "--request-id",
            "7",
            "--header",
            "12=-5",
            "--body-json",
            r#"[{"tag":2,"type":"string","value":"qz"}]"#,
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let j = stdout_json(&o);
    assert_eq!(j["service_id"], 3);
    assert_eq!(j["message_id"], 2);
    assert_eq!(j["headers"]["11"], 7);
    assert_eq!(j["headers"]["12"], -5);
    assert_eq!(j["body"][0]["value"], "qz");

    // One mebibyte goes out as sequences and comes back whole.
    let o = call(
        &s.addr,
        &[
            "--service",
            "9",
            "--message",
            "1",
            "--body-size",
            "1048576",
            "--verify-echo",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        stdout_json(&o)["body_hex"].as_str().unwrap().len(),
        2 * 1_048_576
    );

    let o = call(
        &s.addr,
        &["--service", "9", "--message", "1", "--body-hex", "0c"],
    );
    assert_eq!(stdout_json(&o)["body_hex"], "0c");
    let lines = s.wait_for("close");
    assert!(lines.iter().any(|l| l.contains("open ")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("close ") && l.contains("eof")),
        "{lines:?}"
    );
}

#[test]
fn version_and_failures() {
    let s = Serve::start(false);
    let o = bin().args(["version", &s.addr]).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("flowee-rs:"));

    // A server that does not answer: a one-line timeout and a non-zero exit.
    let o = call(
        &s.addr,
        &["--service", "50", "--message", "1", "--timeout", "0.5"],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("timed out") && err.lines().count() == 1,
        "{err}"
    );

    // Nothing listening.
    let o = call("127.0.0.1:1", &["--service", "1", "--message", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);

    // Bad arguments are usage errors.
    let o = call(
        &s.addr,
        &["--service", "1", "--message", "1", "--header", "nonsense"],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn serve_exits_cleanly_on_sigterm() {
    let mut s = Serve::start(true);
    let pid = s.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < end, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_demo_runs_in_under_ten_seconds() {
    let start = Instant::now();
    let o = bin().arg("demo").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(start.elapsed() < Duration::from_secs(10));
    let out = String::from_utf8_lossy(&o.stdout);
    for what in [
        "version request",
        "1 MB echoed",
        "pong",
        "banned 127.0.0.2",
        "refused",
        "after the reconnect",
        "done",
    ] {
        assert!(out.contains(what), "missing {what:?} in:\n{out}");
    }
}
