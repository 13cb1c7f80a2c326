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
        Serve::start_with(if echo { &["--echo"] } else { &[] })
    }

    /// `serve --listen 127.0.0.1:0` with more arguments.
    fn start_with(args: &[&str]) -> Serve {
        let mut cmd = bin();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
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
    // Negative ids are values, not options (the C++ writes -1 for "no message id").
    let o = call(
        &s.addr,
        &["--service", "9", "--message", "-1", "--request-id", "-7"],
    );
    assert!(o.status.success(), "{o:?}");
    let j = stdout_json(&o);
    assert_eq!(
        (&j["message_id"], &j["headers"]["11"]),
        (&(-1).into(), &(-7).into())
    );
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
fn unsupported_commands_get_a_command_failed_as_from_a_hub() {
    for adapter in ["smol", "std"] {
        let s = Serve::start_with(&["--adapter", adapter]);
        let o = call(
            &s.addr,
            &[
                "--service",
                "1",
                "--message",
                "10",
                "--request-id",
                "5",
                "--header",
                "12=-3",
                "--header",
                "10=1",
            ],
        );
        assert!(o.status.success(), "{adapter}: {o:?}");
        let reply = stdout_json(&o);
        assert_eq!(
            (&reply["service_id"], &reply["message_id"]),
            (&Json::from(0), &Json::from(2)),
            "{adapter}: {reply}"
        );
        // RequestId and the tags above it are copied; ASyncRequest (10) is not.
        assert_eq!(reply["headers"], serde_json::json!({"11": 5, "12": -3}));
        assert_eq!(
            reply["body"],
            serde_json::json!([
                {"tag": 20, "type": "string", "value": "Unsupported command"},
                {"tag": 21, "type": "uint", "value": 1},
                {"tag": 22, "type": "uint", "value": 10},
            ]),
            "{adapter}"
        );
    }
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
    // Header ints the protocol cannot carry too (status 2 and one line, before connecting:
    // nothing listens at port 1, which would be status 1).
    let many: Vec<String> = (20..37)
        .flat_map(|t| ["--header".into(), format!("{t}=1")])
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for bad in [
        &["--header", "5=1"][..],
        &["--header", "9=1"],
        &["--header", "16777215=1"],
        &["--header", "12=2147483647"],
        &["--request-id", "2147483647"],
        &many,
    ] {
        let o = call(
            "127.0.0.1:1",
            &[&["--service", "1", "--message", "1"][..], bad].concat(),
        );
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{bad:?}: {err}");
    }
    // So are ids no message can carry: the system service, a negative service, a message id
    // that is not an int.
    for bad in [
        ["--service", "126", "--message", "1"],
        ["--service", "-1", "--message", "1"],
        ["--service", "1", "--message", "2147483647"],
    ] {
        let o = call("127.0.0.1:1", &bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{bad:?}: {err}");
    }
    // The edges of the range are fine (the call fails only for want of a server).
    for good in ["10=1", "16777214=-1"] {
        let o = call(
            "127.0.0.1:1",
            &["--service", "1", "--message", "1", "--header", good],
        );
        assert_eq!(o.status.code(), Some(1), "{good}: {o:?}");
    }
}

/// A raw server for one connection: reads one frame, then writes `answer` and, if `close`,
/// closes. Returns its address.
fn scripted_server(answer: Vec<u8>, close: bool) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; usize::from(u16::from_le_bytes(len)) - 2];
        stream.read_exact(&mut frame).unwrap();
        stream.write_all(&answer).unwrap();
        if close {
            return;
        }
        // Open until the client goes.
        let _ = stream.read(&mut [0u8; 64]);
    });
    addr
}

/// Without `--request-id`, the reply is the first message of the request's service (or a
/// CommandFailed): a notification of another service that comes first is not taken for it.
#[test]
fn call_without_a_request_id_takes_the_reply_of_its_service() {
    // 18/4 (a block notification), then 3/3.
    let answer = [
        [0x07, 0x00, 0x08, 0x12, 0x10, 0x04, 0x04],
        [0x07, 0x00, 0x08, 0x03, 0x10, 0x03, 0x04],
    ]
    .concat();
    let o = call(
        &scripted_server(answer, false),
        &["--service", "3", "--message", "2", "--timeout", "20"],
    );
    assert!(o.status.success(), "{o:?}");
    let reply = stdout_json(&o);
    assert_eq!(
        (&reply["service_id"], &reply["message_id"]),
        (&3.into(), &3.into())
    );
    // A CommandFailed (0/2) is the reply too.
    let o = call(
        &scripted_server(vec![0x07, 0x00, 0x08, 0x00, 0x10, 0x02, 0x04], false),
        &["--service", "3", "--message", "2", "--timeout", "20"],
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout_json(&o)["message_id"], 2);
}

/// A server that closes after the request: `version` fails at once, as `call` does, rather
/// than waiting out its timeout on the socket that replaces it.
#[test]
fn version_fails_at_once_when_the_server_closes() {
    for command in ["version", "call"] {
        let addr = scripted_server(Vec::new(), true);
        let started = Instant::now();
        let mut cmd = bin();
        cmd.args([command, &addr, "--timeout", "60"]);
        if command == "call" {
            cmd.args(["--service", "3", "--message", "2"]);
        }
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{command}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("connection closed"), "{command}: {err}");
        assert!(started.elapsed() < Duration::from_secs(30), "{command}");
    }
}

#[test]
fn an_echo_server_echoes_version_requests_too() {
    // `serve --echo` sends 0/0 back as it came, so `version` gets no version reply.
    let s = Serve::start(true);
    let o = bin()
        .args(["version", &s.addr, "--timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unexpected reply 0/0"), "{err}");
}

#[test]
fn serve_logs_the_closes_its_shutdown_causes() {
    for adapter in ["smol", "std"] {
        let mut s = Serve::start_with(&["--adapter", adapter]);
        let peer = std::net::TcpStream::connect(&s.addr).unwrap();
        s.wait_for("open ");
        let pid = s.child.id().to_string();
        let killed = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(killed.success());
        let lines = s.wait_for("close ");
        assert!(
            lines.iter().any(|l| l.contains("shutting down")),
            "{adapter}: the close came before the shutdown: {lines:?}"
        );
        // The reason the shutdown gave: a local close.
        let close = lines.last().unwrap();
        assert!(
            close.contains("local (closed locally)"),
            "{adapter}: {close}"
        );
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = s.child.try_wait().unwrap() {
                assert!(status.success(), "{adapter}: {status:?}");
                break;
            }
            assert!(Instant::now() < end, "{adapter}: serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(peer);
    }
}

/// Peers may send what we may not (a negative service id after the first frame): the echo
/// server says it did not echo it, and goes on echoing. A header with more ints than are kept
/// is echoed with the kept ones, and that is said too.
#[test]
fn serve_says_what_it_cannot_echo() {
    use std::io::{Read, Write};
    for adapter in ["smol", "std"] {
        let s = Serve::start_with(&["--echo", "--adapter", adapter]);
        let mut peer = std::net::TcpStream::connect(&s.addr).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        // 3/1, then -5/0, then 3/2 (each with an empty body).
        let ok = [0x07, 0x00, 0x08, 0x03, 0x10, 0x01, 0x04];
        peer.write_all(&ok).unwrap();
        peer.write_all(&[0x07, 0x00, 0x09, 0x05, 0x10, 0x00, 0x04])
            .unwrap();
        peer.write_all(&[0x07, 0x00, 0x08, 0x03, 0x10, 0x02, 0x04])
            .unwrap();
        let line = s.wait_for("not echoed").pop().unwrap();
        assert!(line.contains("-5/0: service id -5"), "{adapter}: {line}");
        let mut back = [0u8; 14];
        peer.read_exact(&mut back).unwrap();
        assert_eq!(back[..7], ok, "{adapter}");
        assert_eq!(
            back[7..],
            [0x07, 0x00, 0x08, 0x03, 0x10, 0x02, 0x04],
            "{adapter}"
        );
        // 3/3 with 17 ints (tags 10..=26, value 1) comes back with tags 10..=25.
        let header = |tags: std::ops::RangeInclusive<u8>| {
            let mut h = vec![0x08, 0x03, 0x10, 0x03];
            for tag in tags {
                h.extend_from_slice(&[tag << 3, 0x01]);
            }
            h.push(0x04);
            let mut frame = ((h.len() + 2) as u16).to_le_bytes().to_vec();
            frame.extend(h);
            frame
        };
        peer.write_all(&header(10..=26)).unwrap();
        let mut back = vec![0u8; header(10..=25).len()];
        peer.read_exact(&mut back).unwrap();
        assert_eq!(back, header(10..=25), "{adapter}");
        let line = s.wait_for("echoed").pop().unwrap();
        assert!(
            line.contains("3/3 with only its 16 lowest header ints (it had more)"),
            "{adapter}: {line}"
        );
    }
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
    // Where 127.0.0.2 cannot be bound (macOS), the misbehaving peer is 127.0.0.1.
    let banned = if out.contains("cannot be used here") {
        "banned 127.0.0.1"
    } else {
        "banned 127.0.0.2"
    };
    for what in [
        "version request",
        "1 MB echoed",
        "pong",
        banned,
        "refused",
        "after the reconnect",
        "done",
    ] {
        assert!(out.contains(what), "missing {what:?} in:\n{out}");
    }
}

#[test]
fn the_demo_runs_where_its_peer_address_cannot_be_bound() {
    // 192.0.2.1 (TEST-NET-1) is not an address of this machine, as 127.0.0.2 is not on macOS.
    let peer = std::net::Ipv4Addr::new(192, 0, 2, 1);
    if std::net::TcpListener::bind((peer, 0)).is_ok() {
        eprintln!("{peer} is local here; nothing to test");
        return;
    }
    let start = Instant::now();
    smol::block_on(flowee_cli::demo::demo_from(peer)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Every `bench` mode on both adapters, against both servers, small enough to be quick: the
/// output names what was measured, and the figures are positive. Two modes take the longest
/// timeout there is (once a panic: the clock overflowed).
#[test]
fn bench_measures_throughput_latency_and_requests_on_both_adapters() {
    let figure = |out: &str, key: &str| -> f64 {
        let field = out
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {out:?}"));
        field.parse().unwrap()
    };
    for server in ["smol", "std"] {
        let s = Serve::start_with(&["--echo", "--adapter", server]);
        for client in ["smol", "std"] {
            let modes: [&[&str]; 4] = [
                &[
                    "--count",
                    "300",
                    "--size",
                    "100",
                    "--window",
                    "50",
                    "--timeout",
                    "1e19",
                ],
                &["--count", "20", "--size", "20000", "--window", "4"],
                &["--latency", "--count", "100"],
                &[
                    "--requests",
                    "--count",
                    "100",
                    "--size",
                    "9000",
                    "--timeout",
                    "1e19",
                ],
            ];
            for mode in modes {
                let o = bin()
                    .args(["bench", &s.addr, "--adapter", client])
                    .args(mode)
                    .output()
                    .unwrap();
                let out = String::from_utf8_lossy(&o.stdout);
                assert!(o.status.success(), "{server}/{client} {mode:?}: {o:?}");
                let key = if mode.contains(&"--count") && mode.contains(&"--window") {
                    "msgs_per_s="
                } else {
                    "median_us="
                };
                assert!(figure(&out, key) > 0.0, "{server}/{client} {mode:?}: {out}");
            }
        }
    }
}

/// A server that answers nothing: `--requests` reports the run's timeout (not the last
/// request's), on both adapters; and a count of 0 is refused.
#[test]
fn bench_requests_time_out_as_a_run_and_count_zero_is_refused() {
    let s = Serve::start_with(&[]);
    for client in ["smol", "std"] {
        let o = bin()
            .args(["bench", &s.addr, "--requests", "--count", "3"])
            .args(["--timeout", "0.3", "--adapter", client])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("timed out: 0 of 3 requests answered"),
            "{client}: {err}"
        );
    }
    let o = bin()
        .args(["bench", &s.addr, "--count", "0"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--count"), "{err}");
}

#[test]
fn bench_against_nobody_fails_with_a_message() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    for mode in ["--latency", "--requests"] {
        let o = bin()
            .args(["bench", &addr, mode, "--count", "1"])
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("cannot connect"), "{mode}: {err}");
    }
}
