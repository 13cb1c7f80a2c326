//! `flowee-cli`: decode and encode Flowee frames as JSON, serve, call, and a demo.

use clap::{Parser, Subcommand};
use flowee_cli::{bench, demo, json, net};
use flowee_proto::frame::FrameEncoder;
use flowee_proto::header::{CUSTOM_TAG_MAX, CUSTOM_TAG_MIN, Header, HeaderInts, tags};
use serde_json::Value as Json;
use std::io::Read;
use std::num::{NonZeroU32, NonZeroUsize};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "flowee-cli",
    version,
    about = "Tools for Flowee's message protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decode a frame stream (or with --cmf, one CMF document) from hex into JSON.
    Decode {
        /// Read a bare CMF document instead of a frame stream.
        #[arg(long)]
        cmf: bool,
        /// Hex bytes (spaces allowed, also between arguments), or `-` to read them from stdin.
        #[arg(required = true, num_args = 1..)]
        hex: Vec<String>,
    },
    /// Encode JSON messages, one after the other as `decode` prints them (or with --cmf, a
    /// JSON token array), into the hex the C++ would send.
    Encode {
        /// Encode a token array into a bare CMF document.
        #[arg(long)]
        cmf: bool,
        /// JSON text, or `-` to read it from stdin.
        json: String,
    },
    /// Run a server that answers pings and version requests, and other requests to services
    /// below 16 with CommandFailed (with --echo: pings, and every other message is sent
    /// back); stops on SIGINT or SIGTERM.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:1235.
        #[arg(long)]
        listen: String,
        /// Send every message back with the same header ints and body, version requests (0/0)
        /// included: they are echoed, not answered.
        #[arg(long)]
        echo: bool,
        /// Close clients that do not ping within this many seconds (default: 150 after
        /// connecting, 120 after a ping, as the C++ does).
        #[arg(long, value_name = "SECS")]
        ping_timeout: Option<f64>,
        /// Most connections at once.
        #[arg(long, default_value_t = 10_000)]
        max_connections: usize,
        /// Most connections from one IP address at once (default: no limit).
        #[arg(long, value_name = "N")]
        max_per_ip: Option<u32>,
        /// The adapter that runs the server: smol or std.
        #[arg(long, default_value = "smol")]
        adapter: bench::Adapter,
    },
    /// Measure echo throughput (or round-trip latency) against `serve --echo`.
    Bench {
        /// Server address, e.g. 127.0.0.1:1235.
        addr: String,
        /// Messages to echo (at least 1).
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Body size in bytes (above 8000, messages go as sequences).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Messages in flight (at most 2000, the send queue's length).
        #[arg(long, default_value_t = 500)]
        window: usize,
        /// One message in flight; print the median and 99th percentile round trip.
        #[arg(long)]
        latency: bool,
        /// Like --latency, through `Client::request` awaited on the calling thread, as an
        /// application makes requests (not from the adapter's own threads and tasks).
        #[arg(long, conflicts_with_all = ["latency", "window"])]
        requests: bool,
        /// The adapter that runs the client: smol or std.
        #[arg(long, default_value = "smol")]
        adapter: bench::Adapter,
        /// Seconds to wait for the run to finish.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
    },
    /// Connect, send one message, print the reply as JSON.
    Call {
        /// Server address, e.g. 127.0.0.1:1235.
        addr: String,
        /// Service id (0 to 2147483646, not 126).
        #[arg(long, allow_negative_numbers = true)]
        service: i32,
        /// Message id (-1: none, as the C++ writes it).
        #[arg(long, allow_negative_numbers = true)]
        message: i32,
        /// RequestId (header tag 11); the reply is matched by it (without it, the reply is the
        /// first message of the same service, or a CommandFailed 0/2).
        #[arg(long, allow_negative_numbers = true)]
        request_id: Option<i32>,
        /// A header int, TAG=INT (tags 10 to 16777214); may be repeated.
        #[arg(long = "header", value_name = "TAG=INT")]
        headers: Vec<String>,
        /// The body as hex.
        #[arg(long, group = "body")]
        body_hex: Option<String>,
        /// The body as a JSON token array (as `decode --cmf` prints).
        #[arg(long, group = "body")]
        body_json: Option<String>,
        /// A body of N bytes where byte i is i mod 256.
        #[arg(long, group = "body")]
        body_size: Option<usize>,
        /// Fail unless the reply's body equals the body sent.
        #[arg(long)]
        verify_echo: bool,
        /// Seconds to wait for the connection and for the reply.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Ask a Flowee Hub (or any compatible server) for its version.
    Version {
        /// Server address, e.g. 127.0.0.1:1235.
        addr: String,
        /// Seconds to wait.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// A tour over loopback: request/response, 1 MB through sequences, keepalive, a ban,
    /// a reconnect.
    Demo,
}

/// Exit status for bad input and protocol errors.
const FAILURE: u8 = 2;
/// Exit status for a failed call, version or serve (timeouts, closes, mismatches).
const RUN_FAILURE: u8 = 1;

/// The longest wait the options take: a year is as good as none, and longer ones could overflow
/// the clock.
const LONGEST_WAIT: Duration = Duration::from_secs(365 * 86_400);

fn seconds(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .map(|d| d.min(LONGEST_WAIT))
        .map_err(|_| format!("not a duration in seconds: {s}"))
}

fn header_arg(text: &str) -> Result<(u32, i32), String> {
    let (tag, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--header {text:?}: expected TAG=INT"))?;
    let tag: u32 = tag
        .trim()
        .parse()
        .map_err(|_| format!("--header {text:?}: bad tag"))?;
    if !(CUSTOM_TAG_MIN..=CUSTOM_TAG_MAX).contains(&tag) {
        return Err(format!(
            "--header {text:?}: the tag must be {CUSTOM_TAG_MIN} to {CUSTOM_TAG_MAX} \
             (lower tags belong to the protocol)"
        ));
    }
    let value = value
        .trim()
        .parse()
        .map_err(|_| format!("--header {text:?}: bad int"))?;
    // The value's own rule (0x7FFF_FFFF is not an int to receivers).
    HeaderInts::new()
        .set(tag, value)
        .map_err(|e| format!("--header {text:?}: {e}"))?;
    Ok((tag, value))
}

/// Checks that the header ints of a `call` fit in one header (bad input, not a failed call).
/// The header `call` sends, refused here (bad input) if it could not be sent with `body`.
fn call_header(
    service: i32,
    message: i32,
    headers: &[(u32, i32)],
    request_id: Option<i32>,
    body: &[u8],
) -> Result<Header, String> {
    let mut ints = HeaderInts::new();
    for &(tag, value) in headers {
        ints.set(tag, value).map_err(|e| format!("--header: {e}"))?;
    }
    if let Some(id) = request_id {
        ints.set(tags::REQUEST_ID, id)
            .map_err(|e| format!("--request-id {id}: {e}"))?;
    }
    let header = Header {
        service_id: service,
        message_id: Some(message),
        ints,
    };
    // The encoder's checks are the ones a send makes.
    FrameEncoder::new()
        .check(&header, body.len())
        .map_err(|e| format!("cannot send --service {service} --message {message}: {e}"))?;
    Ok(header)
}

/// Runs a network command: its own failures print one line and exit with 1.
fn network(result: Result<Option<String>, net::Failure>) -> ExitCode {
    match result {
        Ok(Some(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowee-cli: {e}");
            ExitCode::from(RUN_FAILURE)
        }
    }
}

fn argument(arg: String) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| format!("reading stdin: {e}"))?;
    Ok(text)
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Decode { cmf, hex } => {
            let bytes = json::from_hex(&argument(hex.join(" "))?).map_err(|e| e.to_string())?;
            if cmf {
                return match json::cmf_to_json(&bytes) {
                    Ok(tokens) => {
                        println!("{tokens}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        println!(
                            "{}",
                            serde_json::json!({ "error": e.kind.name(), "detail": e.to_string() })
                        );
                        Ok(ExitCode::from(FAILURE))
                    }
                };
            }
            let (lines, ok) = json::decode_stream(&bytes);
            for line in lines {
                println!("{line}");
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(FAILURE)
            })
        }
        Command::Encode { cmf, json: text } => {
            let text = argument(text)?;
            let bytes = if cmf {
                let value: Json =
                    serde_json::from_str(&text).map_err(|e| format!("bad JSON: {e}"))?;
                json::json_to_cmf(&value).map_err(|e| e.to_string())?
            } else {
                // The frames of every message, in order (`decode` prints one per line).
                let mut bytes = Vec::new();
                for value in serde_json::Deserializer::from_str(&text).into_iter::<Json>() {
                    let value = value.map_err(|e| format!("bad JSON: {e}"))?;
                    let message = json::json_to_message(&value).map_err(|e| e.to_string())?;
                    bytes.extend(json::encode_message(&message).map_err(|e| e.to_string())?);
                }
                if bytes.is_empty() {
                    return Err("no JSON message to encode".into());
                }
                bytes
            };
            println!("{}", json::to_hex(&bytes));
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            listen,
            echo,
            ping_timeout,
            max_connections,
            max_per_ip,
            adapter,
        } => {
            let (tx, rx) = smol::channel::bounded::<()>(1);
            ctrlc::set_handler(move || {
                let _ = tx.try_send(());
            })
            .map_err(|e| format!("cannot handle signals: {e}"))?;
            let stop = async move {
                let _ = rx.recv().await;
            };
            let mut config = flowee_smol::NodeConfig::default();
            if let Some(secs) = ping_timeout {
                let timeout = seconds(secs)?;
                config.connection.first_ping_timeout = timeout;
                config.connection.ping_timeout = timeout;
            }
            config.max_connections =
                NonZeroUsize::new(max_connections).ok_or("--max-connections must be at least 1")?;
            if let Some(n) = max_per_ip {
                config.max_connections_per_ip =
                    Some(NonZeroU32::new(n).ok_or("--max-per-ip must be at least 1")?);
            }
            let served = match adapter {
                bench::Adapter::Smol => smol::block_on(net::serve(&listen, echo, config, stop)),
                bench::Adapter::Std => {
                    net::serve_std(&listen, echo, config, move || smol::block_on(stop))
                }
            };
            Ok(network(served.map(|()| None)))
        }
        Command::Call {
            addr,
            service,
            message,
            request_id,
            headers,
            body_hex,
            body_json,
            body_size,
            verify_echo,
            timeout,
        } => {
            let body = if let Some(hex) = body_hex {
                json::from_hex(&argument(hex)?).map_err(|e| e.to_string())?
            } else if let Some(tokens) = body_json {
                let value: Json = serde_json::from_str(&argument(tokens)?)
                    .map_err(|e| format!("bad JSON: {e}"))?;
                json::json_to_cmf(&value).map_err(|e| e.to_string())?
            } else if let Some(n) = body_size {
                (0..n).map(|i| i as u8).collect()
            } else {
                Vec::new()
            };
            let headers: Vec<(u32, i32)> = headers
                .iter()
                .map(|h| header_arg(h))
                .collect::<Result<_, _>>()?;
            let call = net::Call {
                header: call_header(service, message, &headers, request_id, &body)?,
                body,
                verify_echo,
                timeout: seconds(timeout)?,
            };
            Ok(network(smol::block_on(net::call(&addr, &call)).map(Some)))
        }
        Command::Version { addr, timeout } => Ok(network(
            smol::block_on(net::version(&addr, seconds(timeout)?)).map(Some),
        )),
        Command::Demo => Ok(network(smol::block_on(demo::demo()).map(|()| None))),
        Command::Bench {
            addr,
            count,
            size,
            window,
            latency,
            requests,
            adapter,
            timeout,
        } => {
            if !(1..=2000).contains(&window) {
                return Err(format!("--window must be 1..=2000, not {window}"));
            }
            let run = bench::Bench {
                count,
                size,
                window,
                latency,
                requests,
                adapter,
                timeout: seconds(timeout)?,
            };
            let outcome = match adapter {
                bench::Adapter::Smol => bench::run_smol(&addr, &run),
                bench::Adapter::Std => bench::run_std(&addr, &run),
            };
            Ok(network(outcome.map(|o| Some(o.to_string()))))
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("flowee-cli: {msg}");
            ExitCode::from(FAILURE)
        }
    }
}
