//! `demo`: a tour of the stack over loopback, in a few seconds, with a readable transcript.

use crate::net::{Failure, echo, version_service};
use flowee_proto::connection::Config;
use flowee_smol::{
    Client, Header, Message, NodeConfig, NodeEvent, Priority, Server, describe_close,
};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Transcript(Instant);

impl Transcript {
    fn say(&self, what: impl std::fmt::Display) {
        println!("[{:>6.3}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure(e.to_string())
}

/// A server on `addr` (port 0: any) that answers version requests and echoes service 3.
async fn start_server(addr: SocketAddr, t: &Transcript) -> Result<Server, Failure> {
    let server = Server::bind(addr, NodeConfig::default())
        .await
        .map_err(fail)?;
    server.handle(0, Some(0), version_service).map_err(fail)?;
    server.handle(3, None, echo).map_err(fail)?;
    let mut events = server.events();
    smol::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                NodeEvent::Misbehaved {
                    kind, points, id, ..
                } => println!(
                    "           server: {id} misbehaved ({}: +{points})",
                    kind.name()
                ),
                NodeEvent::Closed { id, reason } => {
                    println!(
                        "           server: {id} closed: {}",
                        describe_close(&reason)
                    )
                }
                NodeEvent::Banned { ip } => println!("           server: banned {ip}"),
                NodeEvent::Refused { peer, reason } => {
                    println!("           server: refused {peer} at accept: {reason}")
                }
                _ => {}
            }
        }
    })
    .detach();
    t.say(format_args!("server listening on {}", server.local_addr()));
    Ok(server)
}

/// Where the misbehaving peer connects from: not the client's address, so its ban leaves the
/// client alone.
pub const RAW_PEER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Whether a socket can be bound to `ip` (127.0.0.2 cannot on macOS, for one).
fn can_bind(ip: Ipv4Addr) -> bool {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .and_then(|s| s.bind(&SocketAddr::from((ip, 0)).into()))
        .is_ok()
}

/// A raw TCP connection from `from` that sends `bytes`; returns what came back before the
/// server closed it.
fn raw_peer(from: Ipv4Addr, server: SocketAddr, bytes: &[u8]) -> Result<usize, Failure> {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).map_err(fail)?;
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .map_err(fail)?;
    socket.connect(&server.into()).map_err(fail)?;
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fail)?;
    let _ = stream.write_all(bytes);
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
    Ok(sink.len())
}

/// Runs the tour.
pub async fn demo() -> Result<(), Failure> {
    demo_from(RAW_PEER).await
}

/// Runs the tour with the misbehaving peer at `peer`. Where that address cannot be bound,
/// the peer connects from 127.0.0.1 to a second server instead (so that its ban does not
/// touch the client), and the transcript says so.
pub async fn demo_from(peer: Ipv4Addr) -> Result<(), Failure> {
    let t = Transcript(Instant::now());
    println!("flowee-cli demo: a server and a client over loopback\n");

    let server = start_server(SocketAddr::from(([127, 0, 0, 1], 0)), &t).await?;
    let addr = server.local_addr();

    // A client with a short keepalive, so pings show within the demo.
    let client_config = NodeConfig {
        connection: Config {
            ping_interval: Duration::from_millis(400),
            pong_timeout: Some(Duration::from_secs(2)),
            ..Config::default()
        },
        reconnect_after_drop: Duration::from_millis(300),
        ..NodeConfig::default()
    };
    let client = Client::connect(addr, client_config).await.map_err(fail)?;
    t.say(format_args!("client connected ({})", client.id()));
    let mut events = client.events();
    smol::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                NodeEvent::Pong { rtt, .. } if rtt.is_zero() => {
                    println!("           client: pong (round trip under 1 ms)")
                }
                NodeEvent::Pong { rtt, .. } => {
                    println!("           client: pong, round trip {rtt:?}")
                }
                NodeEvent::Closed { reason, .. } => {
                    println!("           client: closed: {}", describe_close(&reason))
                }
                NodeEvent::Reconnecting { attempt, .. } => {
                    println!("           client: reconnecting (failed attempts: {attempt})")
                }
                NodeEvent::Connected { peer, .. } => {
                    println!("           client: connected to {peer}")
                }
                _ => {}
            }
        }
    })
    .detach();

    // 1. Request and response, matched by RequestId.
    let v = client
        .request(
            Message::new(&Header::new(0, 0), &[]),
            Duration::from_secs(5),
        )
        .await
        .map_err(fail)?;
    let text = flowee_proto::cmf::Reader::new(&v.body)
        .map_while(Result::ok)
        .find_map(|tok| tok.value.as_str().map(str::to_owned))
        .unwrap_or_default();
    t.say(format_args!(
        "version request 0/0 -> reply {}/{} with RequestId {}: {text:?}",
        v.header.service_id,
        v.header.message_id_or_minus_one(),
        v.header.request_id().unwrap_or(-1)
    ));

    // 2. A 1 MB body: split into 8000-byte chunks on the way out and back.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    let before = client.stats().map_or(0, |s| s.frames_out);
    let reply = client
        .request(
            Message::new(&Header::new(3, 4), &big),
            Duration::from_secs(10),
        )
        .await
        .map_err(fail)?;
    let frames = client.stats().map_or(0, |s| s.frames_out) - before;
    t.say(format_args!(
        "1 MB echoed through sequences: {} frames out, {} bytes back, {}",
        frames,
        reply.body.len(),
        if reply.body[..] == big[..] {
            "identical"
        } else {
            "DIFFERENT"
        }
    ));
    if reply.body[..] != big[..] {
        return Err(fail("the 1 MB echo came back different"));
    }

    // 3. Keepalive: the client pings every 400 ms here (90 s by default).
    t.say("waiting 1.3 s for keepalive pings");
    smol::Timer::after(Duration::from_millis(1300)).await;

    // 4. A misbehaving peer: garbage from another address, ten times, earns a ban.
    let (from, target, spare) = if can_bind(peer) {
        t.say(format_args!(
            "a raw peer at {peer} sends an HTTP request instead of frames, ten times"
        ));
        (peer, addr, None)
    } else {
        t.say(format_args!(
            "{peer} cannot be used here, so a raw peer at 127.0.0.1 sends an HTTP request \
             instead of frames, ten times, to a second server (its ban must not hit the client)"
        ));
        let spare = start_server(SocketAddr::from(([127, 0, 0, 1], 0)), &t).await?;
        (Ipv4Addr::LOCALHOST, spare.local_addr(), Some(spare))
    };
    for _ in 0..10 {
        raw_peer(from, target, b"GET / HTTP/1.1\r\nHost: hub\r\n\r\n")?;
    }
    raw_peer(from, target, b"GET / HTTP/1.1\r\n\r\n")?;
    smol::Timer::after(Duration::from_millis(100)).await;
    t.say("the eleventh connection was refused at accept (see above); the client is unaffected");
    if let Some(spare) = spare {
        spare.shutdown().await;
    }

    // 5. A server restart: messages sent while it is down go out after the reconnect. They
    // are sent once the client has seen the drop: a message the socket takes whole before
    // that is gone with the old connection (TCP cannot say whether the peer read it).
    let mut echoes = client.subscribe(3).map_err(fail)?;
    let mut dropped = client.events();
    t.say("restarting the server");
    server.shutdown().await;
    let seen = async {
        while let Some(e) = dropped.next().await {
            if matches!(e, NodeEvent::Reconnecting { .. }) {
                return true;
            }
        }
        false
    };
    let timeout = async {
        smol::Timer::after(Duration::from_secs(5)).await;
        false
    };
    if !smol::future::or(seen, timeout).await {
        return Err(fail("the client did not notice the server's restart"));
    }
    drop(dropped);
    for i in 0..3 {
        client
            .send(
                Message::new(&Header::new(3, 10 + i), format!("queued #{i}").as_bytes()),
                Priority::Normal,
            )
            .map_err(fail)?;
    }
    t.say("3 messages queued while the server is down");
    let restarted = start_server(addr, &t).await?;
    for _ in 0..3 {
        let wait = async { echoes.next().await };
        let timeout = async {
            smol::Timer::after(Duration::from_secs(5)).await;
            None
        };
        match smol::future::or(wait, timeout).await {
            Some(m) => t.say(format_args!(
                "after the reconnect, echo of {}/{}: {:?}",
                m.header.service_id,
                m.header.message_id_or_minus_one(),
                String::from_utf8_lossy(&m.body)
            )),
            None => return Err(fail("a queued message did not come back after the restart")),
        }
    }

    client.close().await;
    restarted.shutdown().await;
    t.say("done");
    Ok(())
}
