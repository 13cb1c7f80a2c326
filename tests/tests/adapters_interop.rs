//! The adapters against each other over real loopback sockets: smol and std servers with smol
//! and std clients, both ways: small messages, 1 MiB bodies, request/response, keepalive with
//! short intervals, a server restart with queued messages delivered after the reconnect, and a
//! ban refused at accept.

use flowee_proto::connection::Config;
use flowee_proto::node::NodeConfig;
use flowee_proto::{CloseReason, Header, Message, OwnedMessage, Priority};
use flowee_service::{NodeEvent, Request, Responder, reply_header};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// Echoes service 3 with the same header; answers others with message id + 1.
fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
    let header = if req.message.header.service_id == 3 {
        *req.message.header
    } else {
        reply_header(req.message.header)
    };
    let _ = out.reply(Message::new(&header, req.message.body));
}

/// A server of either adapter.
trait TestServer {
    fn addr(&self) -> SocketAddr;
    fn ban(&self, ip: IpAddr);
    fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent>;
    fn stop(self: Box<Self>);
}

/// A client of either adapter.
trait TestClient {
    fn send(&self, m: Message<'_>);
    fn request(&self, m: Message<'_>) -> OwnedMessage;
    /// The next message of service 3 (subscribed at connect).
    fn next_message(&mut self, timeout: Duration) -> Option<OwnedMessage>;
    fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent>;
    fn close(self: Box<Self>);
}

/// Which adapter.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Smol,
    Std,
}

fn client_config() -> NodeConfig {
    NodeConfig {
        connection: Config {
            ping_interval: Duration::from_millis(200),
            pong_timeout: Some(Duration::from_secs(5)),
            ..Config::default()
        },
        reconnect_after_drop: Duration::from_millis(300),
        ..NodeConfig::default()
    }
}

fn server_config() -> NodeConfig {
    NodeConfig::default()
}

mod smol_side {
    use super::*;
    use flowee_smol::{Client, Events, Server, Subscription};

    pub(super) struct S(Server, Events);

    pub(super) fn server(addr: SocketAddr) -> Box<dyn TestServer> {
        let server = smol::block_on(Server::bind(addr, server_config())).unwrap();
        server.handle_unclaimed(echo);
        let events = server.events();
        Box::new(S(server, events))
    }

    impl TestServer for S {
        fn addr(&self) -> SocketAddr {
            self.0.local_addr()
        }
        fn ban(&self, ip: IpAddr) {
            self.0.ban(ip);
        }
        fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
            let next = async { self.1.next().await };
            smol::block_on(smol::future::or(next, async {
                smol::Timer::after(timeout).await;
                None
            }))
        }
        fn stop(self: Box<Self>) {
            smol::block_on(self.0.shutdown());
        }
    }

    pub(super) struct C(Client, Subscription, Events);

    pub(super) fn client(addr: SocketAddr) -> Box<dyn TestClient> {
        let client = smol::block_on(Client::connect(addr, client_config())).unwrap();
        let sub = client.subscribe(3).unwrap();
        let events = client.events();
        Box::new(C(client, sub, events))
    }

    impl TestClient for C {
        fn send(&self, m: Message<'_>) {
            self.0.send(m, Priority::Normal).unwrap();
        }
        fn request(&self, m: Message<'_>) -> OwnedMessage {
            smol::block_on(self.0.request(m, WAIT)).unwrap()
        }
        fn next_message(&mut self, timeout: Duration) -> Option<OwnedMessage> {
            let next = async { self.1.next().await };
            smol::block_on(smol::future::or(next, async {
                smol::Timer::after(timeout).await;
                None
            }))
        }
        fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
            let next = async { self.2.next().await };
            smol::block_on(smol::future::or(next, async {
                smol::Timer::after(timeout).await;
                None
            }))
        }
        fn close(self: Box<Self>) {
            smol::block_on(self.0.close());
        }
    }
}

mod std_side {
    use super::*;
    use flowee_std::{Client, Events, Server, Subscription};

    pub(super) struct S(Server, Events);

    pub(super) fn server(addr: SocketAddr) -> Box<dyn TestServer> {
        let server = Server::bind(addr, server_config()).unwrap();
        server.handle_unclaimed(echo);
        let events = server.events();
        Box::new(S(server, events))
    }

    impl TestServer for S {
        fn addr(&self) -> SocketAddr {
            self.0.local_addr()
        }
        fn ban(&self, ip: IpAddr) {
            self.0.ban(ip);
        }
        fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
            self.1.recv_timeout(timeout).ok()
        }
        fn stop(self: Box<Self>) {
            self.0.shutdown();
        }
    }

    pub(super) struct C(Client, Subscription, Events);

    pub(super) fn client(addr: SocketAddr) -> Box<dyn TestClient> {
        let client = Client::connect(addr, client_config()).unwrap();
        let sub = client.subscribe(3).unwrap();
        let events = client.events();
        Box::new(C(client, sub, events))
    }

    impl TestClient for C {
        fn send(&self, m: Message<'_>) {
            self.0.send(m, Priority::Normal).unwrap();
        }
        fn request(&self, m: Message<'_>) -> OwnedMessage {
            self.0.request(m, WAIT).unwrap()
        }
        fn next_message(&mut self, timeout: Duration) -> Option<OwnedMessage> {
            self.1.recv_timeout(timeout).ok()
        }
        fn next_event(&mut self, timeout: Duration) -> Option<NodeEvent> {
            self.2.recv_timeout(timeout).ok()
        }
        fn close(self: Box<Self>) {
            self.0.close();
        }
    }
}

fn server(kind: Kind, addr: SocketAddr) -> Box<dyn TestServer> {
    match kind {
        Kind::Smol => smol_side::server(addr),
        Kind::Std => std_side::server(addr),
    }
}

fn client(kind: Kind, addr: SocketAddr) -> Box<dyn TestClient> {
    match kind {
        Kind::Smol => smol_side::client(addr),
        Kind::Std => std_side::client(addr),
    }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Waits for an event matching `f`.
fn event_where(
    next: &mut dyn FnMut(Duration) -> Option<NodeEvent>,
    f: impl Fn(&NodeEvent) -> bool,
) -> NodeEvent {
    let end = Instant::now() + WAIT;
    while Instant::now() < end {
        if let Some(e) = next(Duration::from_millis(200)) {
            if f(&e) {
                return e;
            }
        }
    }
    panic!("no such event within {WAIT:?}");
}

fn exchange(server_kind: Kind, client_kind: Kind) {
    let s = server(server_kind, any_port());
    let addr = s.addr();
    let mut c = client(client_kind, addr);

    // Small messages, and their echoes, in order.
    for i in 0..100 {
        c.send(Message::new(
            &Header::new(3, i),
            format!("msg {i}").as_bytes(),
        ));
    }
    for i in 0..100 {
        let m = c.next_message(WAIT).expect("echo");
        assert_eq!(m.header.message_id, Some(i));
        assert_eq!(&m.body[..], format!("msg {i}").as_bytes());
    }

    // A 1 MiB body both ways (sequences of 8000-byte chunks).
    let big: Vec<u8> = (0..1usize << 20).map(|i| (i * 7) as u8).collect();
    c.send(Message::new(&Header::new(3, 500), &big));
    let m = c.next_message(WAIT).expect("1 MiB echo");
    assert!(m.body[..] == big[..], "1 MiB intact");

    // Request/response, matched by RequestId.
    let r = c.request(Message::new(&Header::new(5, 8), b"question"));
    assert_eq!(r.header.service_id, 5);
    assert_eq!(r.header.message_id, Some(9));
    assert_eq!(&r.body[..], b"question");

    // Keepalive with a 200 ms ping interval: pongs come back, nothing closes.
    let mut pongs = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && pongs < 3 {
        match c.next_event(Duration::from_millis(100)) {
            Some(NodeEvent::Pong { .. }) => pongs += 1,
            Some(NodeEvent::Closed { reason, .. }) => panic!("closed: {reason}"),
            _ => {}
        }
    }
    assert!(pongs >= 3, "{pongs} pongs");

    // A server restart: what the client queues meanwhile arrives after the reconnect.
    s.stop();
    event_where(&mut |t| c.next_event(t), |e| {
        matches!(e, NodeEvent::Closed { .. })
    });
    for i in 0..5 {
        c.send(Message::new(
            &Header::new(3, 1000 + i),
            b"queued while down",
        ));
    }
    let mut s = server(server_kind, addr);
    for i in 0..5 {
        let m = c
            .next_message(WAIT)
            .expect("queued message after the reconnect");
        assert_eq!(m.header.message_id, Some(1000 + i));
    }

    // A banned address is refused at accept.
    s.ban(IpAddr::V4(Ipv4Addr::LOCALHOST));
    event_where(&mut |t| s.next_event(t), |e| {
        matches!(e, NodeEvent::Banned { .. })
    });
    event_where(&mut |t| c.next_event(t), |e| {
        matches!(
            e,
            NodeEvent::Closed {
                reason: CloseReason::Eof,
                ..
            }
        )
    });
    event_where(&mut |t| s.next_event(t), |e| {
        matches!(e, NodeEvent::Refused { .. })
    });
    c.close();
    s.stop();
}

#[test]
fn smol_server_std_client() {
    exchange(Kind::Smol, Kind::Std);
}

#[test]
fn std_server_smol_client() {
    exchange(Kind::Std, Kind::Smol);
}

#[test]
fn smol_server_smol_client() {
    exchange(Kind::Smol, Kind::Smol);
}

#[test]
fn std_server_std_client() {
    exchange(Kind::Std, Kind::Std);
}
