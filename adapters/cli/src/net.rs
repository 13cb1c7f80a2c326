//! `serve`, `call` and `version`: the network commands, on the smol adapter.

use crate::json;
use flowee_proto::cmf::Reader;
use flowee_smol::{
    Client, Events, Header, Message, NodeConfig, NodeEvent, Priority, Request, RequestFailure,
    Responder, SendError, Server, describe_close,
};
use smol::future::FutureExt;
use std::fmt;
use std::time::{Duration, Instant};

/// A failure the CLI reports in one line.
#[derive(Debug)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

fn fail(msg: impl Into<String>) -> Failure {
    Failure(msg.into())
}

/// What `flowee-cli` answers to a version request (service 0, message 0).
pub fn version_string() -> String {
    format!(
        "flowee-rs:{} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("CARGO_PKG_NAME")
    )
}

/// Sends every message back with the same header and body.
pub fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
    // A full queue is the client's problem (it sends faster than it reads); never block. What
    // peers may send but we may not (a negative service id, which a first frame cannot carry)
    // is said, not dropped without a word.
    let ids = |h: &Header| {
        let message = h.message_id.map_or("-".into(), |id| id.to_string());
        format!("{}: {}/{message}", req.connection, h.service_id)
    };
    match out.reply(req.message) {
        Err(SendError::Invalid(m, e)) => {
            eprintln!("flowee-cli: not echoed {}: {e}", ids(m.header));
        }
        Ok(()) if req.message.header.ints.truncated() => eprintln!(
            "flowee-cli: echoed {} with only its 16 lowest header ints (it had more)",
            ids(req.message.header)
        ),
        _ => {}
    }
}

/// Answers a version request with a VersionReply (0/1) carrying the version as tag 1.
pub fn version_service(req: &Request<'_>, out: &mut Responder<'_>) {
    let mut body = flowee_proto::cmf::Writer::new(Vec::new());
    body.add(1, version_string().as_str());
    if let Ok(body) = body.finish() {
        let header = flowee_smol::reply_header(req.message.header);
        let _ = out.reply(Message::new(&header, &body));
    }
}

/// Answers what no service takes as the Hub does (spec §9.3): a request to a service below 16
/// gets a CommandFailed (0/2) saying "Unsupported command", with the request's header ints
/// from RequestId (11) up; other services are ignored.
pub fn unsupported_command(req: &Request<'_>, out: &mut Responder<'_>) {
    let asked = req.message.header;
    if !(0..16).contains(&asked.service_id) {
        return;
    }
    let mut body = flowee_proto::cmf::Writer::new(Vec::new());
    body.add(20, "Unsupported command");
    body.add(21, asked.service_id);
    body.add(22, asked.message_id.unwrap_or(-1));
    if let Ok(body) = body.finish() {
        let header = Header {
            service_id: 0,
            message_id: Some(2),
            ..flowee_smol::reply_header(asked)
        };
        let _ = out.reply(Message::new(&header, &body));
    }
}

/// What `serve` answers (echo for everything, or the version service), then the line that
/// says where it listens. A macro, as the smol and std servers are different types with the
/// same methods.
macro_rules! install_services {
    ($server:expr, $echo_all:expr) => {
        if $echo_all {
            $server.handle_unclaimed(echo);
        } else {
            $server
                .handle(0, Some(0), version_service)
                .map_err(|e| fail(e.to_string()))?;
            $server.handle_unclaimed(unsupported_command);
        }
        eprintln!(
            "flowee-cli: listening on {}{}",
            $server.local_addr(),
            if $echo_all { " (echo)" } else { "" }
        );
    };
}

/// `serve`: runs until `stop` resolves, logging one line per connection open and close
/// (including the closes the shutdown causes).
pub async fn serve(
    listen: &str,
    echo_all: bool,
    config: NodeConfig,
    stop: impl Future<Output = ()>,
) -> Result<(), Failure> {
    let server = Server::bind(listen, config)
        .await
        .map_err(|e| fail(format!("cannot listen on {listen}: {e}")))?;
    // Listen to events before saying where it listens, so no connection's open goes unlogged.
    let mut events = server.events();
    install_services!(server, echo_all);
    // The stream ends when the shutdown has closed every connection, after their closes.
    let log = async {
        while let Some(e) = events.next().await {
            log_event(&e);
        }
    };
    let run = async {
        stop.await;
        eprintln!("flowee-cli: shutting down");
        server.shutdown().await;
    };
    smol::future::zip(log, run).await;
    Ok(())
}

/// `serve` on the std adapter: the same server, with threads; runs until `stop` returns.
pub fn serve_std(
    listen: &str,
    echo_all: bool,
    config: NodeConfig,
    stop: impl FnOnce(),
) -> Result<(), Failure> {
    let server = flowee_std::Server::bind(listen, config)
        .map_err(|e| fail(format!("cannot listen on {listen}: {e}")))?;
    let events = server.events();
    install_services!(server, echo_all);
    let log = std::thread::spawn(move || {
        for e in events {
            log_event(&e);
        }
    });
    stop();
    eprintln!("flowee-cli: shutting down");
    server.shutdown();
    let _ = log.join();
    Ok(())
}

/// One log line for the events `serve` reports.
fn log_event(e: &NodeEvent) {
    match e {
        NodeEvent::Connected { id, peer } => eprintln!("flowee-cli: open {id} {peer}"),
        NodeEvent::Closed { id, reason } => {
            eprintln!("flowee-cli: close {id}: {}", describe_close(reason))
        }
        NodeEvent::Refused { peer, reason } => {
            eprintln!("flowee-cli: refused {peer}: {} ({reason})", reason.name())
        }
        NodeEvent::Banned { ip } => eprintln!("flowee-cli: banned {ip}"),
        NodeEvent::ServicePanicked {
            id,
            service,
            message,
        } => eprintln!(
            "flowee-cli: a service panicked on {id}'s message {service}/{}",
            message.map_or("-".into(), |m| m.to_string())
        ),
        _ => {}
    }
}

/// What `call` sends.
#[derive(Clone, Debug)]
pub struct Call {
    /// The message's header. Its RequestId (tag 11), if any, matches the reply; without one,
    /// the reply is the first message of the same service, or a CommandFailed (0/2), as the
    /// Hub answers (spec §9.3).
    pub header: Header,
    /// The body.
    pub body: Vec<u8>,
    /// Fail unless the reply's body equals the body sent.
    pub verify_echo: bool,
    /// How long to wait for the connection and the reply, together.
    pub timeout: Duration,
}

/// `call`: sends one message and returns the reply as a JSON line.
pub async fn call(addr: &str, call: &Call) -> Result<String, Failure> {
    let header = &call.header;
    let deadline = Deadline::after(call.timeout);
    let client = connect(addr, &deadline).await?;
    let mut incoming = client.incoming();
    let mut events = client.events();
    client
        .send(Message::new(header, &call.body), Priority::Normal)
        .map_err(|e| fail(format!("cannot send: {e}")))?;
    let answers = |h: &Header| match header.request_id() {
        Some(id) => h.request_id() == Some(id),
        None => h.service_id == header.service_id || (h.service_id, h.message_id) == (0, Some(2)),
    };
    let reply = async {
        loop {
            match incoming.next().await {
                Some(m) if answers(&m.header) => return Ok(m),
                Some(_) => {}
                None => return Err(fail("connection closed")),
            }
        }
    };
    let reply = reply
        .or(closed(&mut events))
        .or(deadline.expire("waiting for the reply"))
        .await;
    client.close().await;
    let reply = reply?;
    if call.verify_echo && reply.body[..] != call.body[..] {
        return Err(fail(format!(
            "reply body differs from what was sent ({} bytes sent, {} received)",
            call.body.len(),
            reply.body.len()
        )));
    }
    Ok(json::message_to_json(&reply.header, &reply.body).to_string())
}

/// One `--timeout` for a whole command: connecting and waiting for the reply together.
struct Deadline {
    total: Duration,
    at: Instant,
}

impl Deadline {
    fn after(total: Duration) -> Deadline {
        Deadline {
            total,
            // Capped at a year (as good as none), so the clock cannot overflow.
            at: Instant::now() + total.min(Duration::from_secs(365 * 86_400)),
        }
    }

    /// What is left of it.
    fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Fails with a timeout (naming `what` it was doing) when the deadline passes.
    async fn expire<T>(&self, what: &str) -> Result<T, Failure> {
        smol::Timer::at(self.at).await;
        Err(fail(format!(
            "timed out after {}s {what}",
            self.total.as_secs_f64()
        )))
    }
}

/// Fails when the connection closes: a reply cannot come on the socket that replaces it.
async fn closed<T>(events: &mut Events) -> Result<T, Failure> {
    loop {
        match events.next().await {
            Some(NodeEvent::Closed { reason, .. }) => {
                return Err(fail(format!(
                    "connection closed: {}",
                    describe_close(&reason)
                )));
            }
            Some(_) => {}
            None => return Err(fail("connection closed")),
        }
    }
}

/// Connects, failing at the deadline.
async fn connect(addr: &str, deadline: &Deadline) -> Result<Client, Failure> {
    let connect = async {
        Client::connect(addr, NodeConfig::default())
            .await
            .map_err(|e| fail(format!("cannot connect to {addr}: {e}")))
    };
    connect.or(deadline.expire("connecting")).await
}

/// `version`: asks a Hub (or any compatible server) for its version string, waiting at most
/// `wait` for the connection and the reply together.
pub async fn version(addr: &str, wait: Duration) -> Result<String, Failure> {
    let deadline = Deadline::after(wait);
    let client = connect(addr, &deadline).await?;
    let mut events = client.events();
    let request = async {
        match client
            .request(Message::new(&Header::new(0, 0), &[]), deadline.left())
            .await
        {
            Ok(reply) => Ok(reply),
            Err(RequestFailure::Timeout) => deadline.expire("waiting for the reply").await,
            Err(e) => Err(fail(e.to_string())),
        }
    };
    let reply = request
        .or(closed(&mut events))
        .or(deadline.expire("waiting for the reply"))
        .await;
    client.close().await;
    let reply = reply?;
    if (reply.header.service_id, reply.header.message_id) != (0, Some(1)) {
        return Err(fail(format!(
            "unexpected reply {}/{}: {}",
            reply.header.service_id,
            reply.header.message_id_or_minus_one(),
            json::message_to_json(&reply.header, &reply.body)
        )));
    }
    Reader::new(&reply.body)
        .map_while(Result::ok)
        .find(|t| t.tag == 1)
        .and_then(|t| t.value.as_any_bytes())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .ok_or_else(|| fail("the reply has no version string (tag 1)"))
}
