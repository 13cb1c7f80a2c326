//! Scripted tests of nodes joined in memory.

use super::*;
use crate::frame::FrameEncoder;
use crate::storage::Heap;
use std::format;
use std::string::String;
use std::vec::Vec;

type N = Node<Heap>;

fn t(s: u64) -> Instant {
    Instant::from_secs(s)
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::new(10, 0, 0, last)), port)
}

/// An owned copy of an output.
#[derive(Clone, Debug, PartialEq)]
enum O {
    Connect(ConnId, SocketAddr),
    Transmit(ConnId),
    Disconnect(ConnId),
    Event(ConnId, String),
    Message(ConnId, Header, Vec<u8>, Vec<usize>),
    Reply(ConnId, RequestId, Vec<u8>),
    ReplyPart(ConnId, RequestId, String),
    RequestFailed(ConnId, RequestId, RequestError),
    Reconnecting(ConnId, Instant, u32),
    Removed(ConnId, (usize, usize)),
    Banned(IpAddr, Instant),
    Unbanned(IpAddr),
}

fn drain<S: Storage>(n: &mut Node<S>) -> Vec<O> {
    let mut out = Vec::new();
    while let Some(o) = n.poll_output() {
        out.push(match o {
            Output::Connect { id, addr } => O::Connect(id, addr),
            Output::Transmit { id } => O::Transmit(id),
            Output::Disconnect { id } => O::Disconnect(id),
            Output::Event { id, event, .. } => O::Event(id, format!("{event:?}")),
            Output::Message {
                id,
                message,
                handles,
            } => O::Message(
                id,
                *message.header,
                message.body.to_vec(),
                handles.indices().collect(),
            ),
            Output::Reply {
                id,
                request,
                message,
            } => O::Reply(id, request, message.body.to_vec()),
            Output::ReplyPart { id, request, event } => {
                O::ReplyPart(id, request, format!("{event:?}"))
            }
            Output::RequestFailed { id, request, error } => O::RequestFailed(id, request, error),
            Output::Reconnecting { id, at, attempt } => O::Reconnecting(id, at, attempt),
            Output::Removed { id, unsent } => O::Removed(id, unsent),
            Output::Banned { ip, until } => O::Banned(ip, until),
            Output::Unbanned { ip } => O::Unbanned(ip),
        });
    }
    out
}

/// Moves bytes between linked connections of two nodes until quiet; returns both outputs.
fn pump<S: Storage>(
    now: Instant,
    a: &mut Node<S>,
    b: &mut Node<S>,
    links: &[(ConnId, ConnId)],
) -> (Vec<O>, Vec<O>) {
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        oa.extend(drain(a));
        ob.extend(drain(b));
        let mut moved = false;
        for &(x, y) in links {
            moved |= carry(now, a, x, b, y);
            moved |= carry(now, b, y, a, x);
        }
        if !moved {
            oa.extend(drain(a));
            ob.extend(drain(b));
            return (oa, ob);
        }
    }
    panic!("pump did not settle");
}

fn carry<S: Storage>(
    now: Instant,
    from: &mut Node<S>,
    x: ConnId,
    to: &mut Node<S>,
    y: ConnId,
) -> bool {
    let mut moved = false;
    while let Some(data) = from.poll_transmit(x) {
        let data = data.to_vec();
        from.consume_transmit(x, data.len());
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Ok(n) = to.handle_input(now, y, rest) else {
                break;
            };
            rest = &rest[n..];
            if n == 0 {
                drain(to);
            }
        }
        moved = true;
    }
    moved
}

/// A client node connected to a server node.
fn connected(client_cfg: NodeConfig, server_cfg: NodeConfig) -> (N, N, ConnId, ConnId) {
    connected_with(client_cfg, server_cfg)
}

/// [`connected`] with any storage.
fn connected_with<S: Storage>(
    client_cfg: NodeConfig,
    server_cfg: NodeConfig,
) -> (Node<S>, Node<S>, ConnId, ConnId) {
    let mut client = Node::<S>::new(t(0), client_cfg);
    let mut server = Node::<S>::new(t(0), server_cfg);
    let c = client.connect(t(0), addr(1, 1235)).unwrap();
    assert_eq!(drain(&mut client), vec![O::Connect(c, addr(1, 1235))]);
    let s = server.accept(t(0), addr(2, 40000)).unwrap();
    client.handle_connected(t(0), c).unwrap();
    (client, server, c, s)
}

/// A message to `svc`/`id`; a macro, because the message borrows its header, a temporary.
macro_rules! msg {
    ($svc:expr, $id:expr, $body:expr) => {
        Message::new(&Header::new($svc, $id), $body)
    };
}

#[test]
fn messages_are_routed_to_handles() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let service = server.open_handle(Scope::Node).unwrap();
    server.subscribe(service, 3, None).unwrap();
    let watcher = server.open_handle(Scope::Connection(s)).unwrap();
    server.subscribe(watcher, 3, Some(2)).unwrap();
    client
        .send(t(0), c, msg!(3, 2, b"a"), Priority::Normal)
        .unwrap();
    client
        .send(t(0), c, msg!(3, 4, b"b"), Priority::Normal)
        .unwrap();
    client
        .send(t(0), c, msg!(9, 0, b"c"), Priority::Normal)
        .unwrap();
    let (_, out) = pump(t(0), &mut client, &mut server, &[(c, s)]);
    let got: Vec<&O> = out.iter().filter(|o| matches!(o, O::Message(..))).collect();
    assert_eq!(
        got,
        [
            &O::Message(
                s,
                Header::new(3, 2),
                b"a".to_vec(),
                vec![service.index(), watcher.index()]
            ),
            &O::Message(s, Header::new(3, 4), b"b".to_vec(), vec![service.index()]),
            // No service claims service 9.
            &O::Message(s, Header::new(9, 0), b"c".to_vec(), vec![]),
        ]
    );
}

#[test]
fn transmit_is_announced_again_once_everything_handed_out_is_written() {
    let (mut client, _server, c, _s) = connected(NodeConfig::default(), NodeConfig::default());
    let send = |client: &mut N| {
        client
            .send(t(0), c, msg!(3, 1, &[5; 100]), Priority::Normal)
            .unwrap()
    };
    send(&mut client);
    assert!(drain(&mut client).contains(&O::Transmit(c)));
    // Written in part: still announced, so a second message says nothing new.
    let n = client.poll_transmit(c).unwrap().len();
    client.consume_transmit(c, n - 1);
    send(&mut client);
    assert!(!drain(&mut client).contains(&O::Transmit(c)));
    // Everything written, without the `poll_transmit` that would return `None` (a writer
    // whose budget of writes ended just then): the next message is announced.
    while let Some(data) = client.poll_transmit(c) {
        let n = data.len();
        client.consume_transmit(c, n);
        if !client.connection(c).unwrap().wants_transmit() {
            break;
        }
    }
    send(&mut client);
    assert!(drain(&mut client).contains(&O::Transmit(c)));
}

#[test]
fn input_written_in_place_is_routed_and_answered() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let service = server.open_handle(Scope::Node).unwrap();
    server.subscribe(service, 3, None).unwrap();
    for i in 0..300 {
        client
            .send(t(0), c, msg!(3, i, &[5; 300]), Priority::Normal)
            .unwrap();
    }
    let mut wire = Vec::new();
    while let Some(data) = client.poll_transmit(c) {
        wire.extend_from_slice(data);
        let n = data.len();
        client.consume_transmit(c, n);
    }
    wire.extend_from_slice(&crate::frame::PING_FRAME);
    let mut rest = &wire[..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let mut room = server.input_room(s).unwrap();
        let n = rest.len().min(room.buf().len()).min(5000);
        room.buf()[..n].copy_from_slice(&rest[..n]);
        assert_eq!(room.commit(t(1), n), n);
        rest = &rest[n..];
        out.extend(drain(&mut server));
    }
    let got: Vec<&O> = out.iter().filter(|o| matches!(o, O::Message(..))).collect();
    assert_eq!(got.len(), 300);
    for (i, o) in got.iter().enumerate() {
        assert_eq!(
            *o,
            &O::Message(
                s,
                Header::new(3, i as i32),
                vec![5; 300],
                vec![service.index()]
            )
        );
    }
    // The ping was answered: the node knows the connection has a pong to send.
    assert!(out.contains(&O::Transmit(s)), "{out:?}");
    assert!(server.poll_transmit(s).is_some());
    // A connection that is gone lends no room.
    server.close(t(1), s).unwrap();
    drain(&mut server);
    drain(&mut server);
    assert_eq!(
        server.input_room(s).err(),
        Some(NodeError::UnknownConnection(s))
    );
}

#[test]
fn a_room_made_but_not_committed_is_still_given_back() {
    let (_client, mut server, _c, s) = connected(NodeConfig::default(), NodeConfig::default());
    drain(&mut server);
    let receive = |n: &N| n.connection(s).map_or(0, |c| c.heap_usage().receive);
    assert_eq!(receive(&server), 0);
    // A read that found nothing (`WouldBlock`): the room was made, nothing committed.
    assert!(!server.input_room(s).unwrap().buf().is_empty());
    assert!(receive(&server) > 0);
    drain(&mut server);
    let mut now = t(0);
    while receive(&server) > 0 && now < t(10) {
        let Some(at) = server.poll_timeout() else {
            break;
        };
        now = at;
        server.handle_timeout(now);
        drain(&mut server);
    }
    assert!(server.connection(s).is_some());
    assert_eq!(receive(&server), 0, "still held at {now:?}");
}

#[test]
fn stale_ids_are_refused() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    server.close(t(1), s).unwrap();
    let out = drain(&mut server);
    assert!(out.contains(&O::Disconnect(s)));
    assert!(out.contains(&O::Removed(s, (0, 0))));
    assert_eq!(
        server.handle_input(t(1), s, b"x"),
        Err(NodeError::UnknownConnection(s))
    );
    assert!(matches!(
        server.send(t(1), s, msg!(1, 1, b""), Priority::Normal),
        Err(SendError::UnknownConnection(_))
    ));
    // A new connection in the same slot gets a new id.
    let s2 = server.accept(t(2), addr(3, 1)).unwrap();
    assert_ne!(s, s2);
    assert!(server.connection(s).is_none());
    assert!(server.connection(s2).is_some());
    let _ = (&mut client, c);
}

#[test]
fn requests_match_replies_and_time_out() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let r1 = client
        .request(t(0), c, msg!(0, 0, b""), Duration::from_secs(5))
        .unwrap();
    let r2 = client
        .request(t(0), c, msg!(0, 0, b""), Duration::from_secs(5))
        .unwrap();
    assert_ne!(r1, r2);
    let (_, out) = pump(t(0), &mut client, &mut server, &[(c, s)]);
    // The server answers the second request only, copying the request id.
    let requests: Vec<Header> = out
        .iter()
        .filter_map(|o| match o {
            O::Message(_, h, ..) => Some(*h),
            _ => None,
        })
        .collect();
    assert_eq!(requests.len(), 2);
    let mut reply = Header::new(0, 1);
    reply.ints = requests[1].ints;
    server
        .send(t(1), s, Message::new(&reply, b"v"), Priority::Normal)
        .unwrap();
    let (out, _) = pump(t(1), &mut client, &mut server, &[(c, s)]);
    assert!(out.contains(&O::Reply(c, r2, b"v".to_vec())));
    assert_eq!(client.poll_timeout(), Some(t(2)).min(client.poll_timeout()));
    client.handle_timeout(t(5));
    assert!(drain(&mut client).contains(&O::RequestFailed(c, r1, RequestError::Timeout)));
    assert_eq!(client.usage().requests, 0);
}

#[test]
fn failed_connects_back_off_like_the_cpp() {
    let mut client = N::new(t(0), NodeConfig::default());
    let c = client.connect(t(0), addr(1, 1235)).unwrap();
    client
        .send(t(0), c, msg!(1, 1, b"queued"), Priority::Normal)
        .unwrap();
    let mut now = t(0);
    let mut attempts = Vec::new();
    for _ in 0..7 {
        let out = drain(&mut client);
        assert!(
            out.iter()
                .any(|o| matches!(o, O::Connect(id, _) if *id == c)),
            "{out:?}"
        );
        attempts.push(now.as_millis() / 1000);
        client.handle_connect_failed(now, c).unwrap();
        let next = drain(&mut client);
        let O::Reconnecting(_, at, _) = next[0] else {
            panic!("{next:?}")
        };
        now = at;
        client.handle_timeout(now);
    }
    // Failures at 0, 0, 4, 17, 49, 93, 137 s.
    assert_eq!(attempts, vec![0, 0, 4, 17, 49, 93, 137]);
    // The message queued before the first attempt is still waiting.
    let mut server = N::new(now, NodeConfig::default());
    drain(&mut client);
    let s = server.accept(now, addr(2, 1)).unwrap();
    client.handle_connected(now, c).unwrap();
    let (_, out) = pump(now, &mut client, &mut server, &[(c, s)]);
    assert!(out.contains(&O::Message(
        s,
        Header::new(1, 1),
        b"queued".to_vec(),
        vec![]
    )));
}

#[test]
fn a_dropped_connection_reconnects_and_resends() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    client
        .send(t(0), c, msg!(1, 1, b"one"), Priority::Normal)
        .unwrap();
    server
        .send(t(0), s, msg!(1, 2, b"hello"), Priority::Normal)
        .unwrap();
    pump(t(0), &mut client, &mut server, &[(c, s)]);
    // Queued while the connection drops, partly written.
    let big = [5u8; 20_000];
    client
        .send(t(19), c, msg!(1, 2, &big), Priority::Normal)
        .unwrap();
    let n = client.poll_transmit(c).unwrap().len();
    client.consume_transmit(c, n / 2);
    client.handle_eof(t(20), c).unwrap();
    let out = drain(&mut client);
    assert!(out.contains(&O::Disconnect(c)));
    assert!(out.contains(&O::Reconnecting(c, t(20), 0)), "{out:?}");
    client.handle_timeout(t(20));
    assert_eq!(drain(&mut client), vec![O::Connect(c, addr(1, 1235))]);
    let s2 = server.accept(t(20), addr(2, 40001)).unwrap();
    client.handle_connected(t(20), c).unwrap();
    let (_, out) = pump(t(20), &mut client, &mut server, &[(c, s2)]);
    assert!(out.contains(&O::Message(s2, Header::new(1, 2), big.to_vec(), vec![])));
}

#[test]
fn queued_bytes_count_while_waiting_to_reconnect() {
    let (mut client, mut server, c, _s) = connected(NodeConfig::default(), NodeConfig::default());
    let big = [5u8; 20_000];
    client
        .send(t(0), c, msg!(1, 2, &big), Priority::Normal)
        .unwrap();
    let n = client.poll_transmit(c).unwrap().len();
    assert_eq!(client.queued_bytes(c), Some(n));
    client.consume_transmit(c, n / 2);
    assert_eq!(client.queued_bytes(c), Some(n - n / 2));
    // Waiting to reconnect: the message cut short goes out whole again, so all of it waits.
    client.handle_eof(t(1), c).unwrap();
    drain(&mut client);
    assert!(client.connection(c).is_none());
    assert_eq!(client.queued_bytes(c), Some(n));
    client.handle_timeout(t(1));
    drain(&mut client);
    let s2 = server.accept(t(1), addr(2, 40001)).unwrap();
    client.handle_connected(t(1), c).unwrap();
    pump(t(1), &mut client, &mut server, &[(c, s2)]);
    assert_eq!(client.queued_bytes(c), Some(0));
    client.close(t(2), c).unwrap();
    drain(&mut client);
    assert_eq!(client.queued_bytes(c), None);
}

#[test]
fn a_peer_that_closes_at_once_is_backed_off() {
    let (mut client, _server, c, _s) = connected(NodeConfig::default(), NodeConfig::default());
    let mut delays = Vec::new();
    let mut now = t(0);
    for _ in 0..4 {
        client.handle_eof(now, c).unwrap();
        let out = drain(&mut client);
        let at = out
            .iter()
            .find_map(|o| match o {
                O::Reconnecting(_, at, _) => Some(*at),
                _ => None,
            })
            .unwrap();
        delays.push((at - now).as_secs());
        now = at;
        client.handle_timeout(now);
        drain(&mut client);
        client.handle_connected(now, c).unwrap();
    }
    assert_eq!(delays, vec![0, 4, 13, 32]);
}

#[test]
fn bans_are_per_address_and_expire() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let ip = addr(2, 0).ip();
    server.punish(t(1), s, 600).unwrap();
    drain(&mut server);
    assert_eq!(server.score(ip), 600);
    server.punish(t(1), s, 400).unwrap();
    let out = drain(&mut server);
    let until = t(1) + Duration::from_secs(24 * 3600);
    assert!(out.contains(&O::Banned(ip, until)), "{out:?}");
    assert!(out.contains(&O::Disconnect(s)));
    assert_eq!(
        server.accept(t(2), addr(2, 40001)),
        Err(Refused::Banned { until })
    );
    // Bans travel as wall-clock data.
    let saved: Vec<BanRecord> = server.export_bans(1_000_000).collect();
    assert_eq!(
        saved,
        vec![BanRecord {
            ip,
            until_unix_secs: 1_000_000 + 24 * 3600 - 1
        }]
    );
    let mut fresh = N::new(t(0), NodeConfig::default());
    assert_eq!(fresh.import_bans(t(0), 1_000_000, saved), 1);
    assert!(matches!(
        fresh.accept(t(0), addr(2, 1)),
        Err(Refused::Banned { .. })
    ));
    // At expiry the ban goes.
    server.handle_timeout(until);
    assert!(drain(&mut server).contains(&O::Unbanned(ip)));
    assert!(server.accept(until, addr(2, 40002)).is_ok());
    let _ = (&mut client, c);
}

#[test]
fn protocol_errors_add_up_per_address() {
    let mut server = N::new(t(0), NodeConfig::default());
    for i in 0..10u16 {
        let s = server.accept(t(u64::from(i)), addr(7, 1000 + i)).unwrap();
        server
            .handle_input(t(u64::from(i)), s, b"GET / HTTP/1.1\r\n")
            .unwrap();
        drain(&mut server);
    }
    assert!(server.banned_until(addr(7, 0).ip()).is_some());
    assert!(matches!(
        server.accept(t(11), addr(7, 2000)),
        Err(Refused::Banned { .. })
    ));
    // Others are not affected.
    assert!(server.accept(t(11), addr(8, 2000)).is_ok());
}

#[test]
fn rate_limiter_follows_net_protect() {
    let cfg = NodeConfig {
        rate_limit: true,
        ..NodeConfig::default()
    };
    let mut server = N::new(t(0), cfg);
    let mut at = |s: u64| server.accept(t(s), addr(9, s as u16)).is_ok();
    assert!(at(0) && at(5) && at(12) && !at(19) && at(23));
    // Loopback is exempt.
    let lo = SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), 1);
    for _ in 0..10 {
        assert!(server.accept(t(30), lo).is_ok());
    }
}

#[test]
fn broadcast_encodes_once_and_reports_full_queues() {
    let cfg = NodeConfig {
        connection: Config {
            normal_queue_len: NonZeroUsize::new(1).unwrap(),
            ..Config::default()
        },
        ..NodeConfig::default()
    };
    let mut server = N::new(t(0), cfg);
    let ids: Vec<ConnId> = (0..5)
        .map(|i| server.accept(t(0), addr(i, 1)).unwrap())
        .collect();
    server
        .send(
            t(0),
            ids[3],
            msg!(1, 1, b"fills the queue"),
            Priority::Normal,
        )
        .unwrap();
    let mut refused = Vec::new();
    let n = server.broadcast(
        t(0),
        &msg!(18, 4, b"new block"),
        Priority::Normal,
        ids.iter().copied(),
        |id, e| refused.push((id, e)),
    );
    assert_eq!(n, 4);
    assert_eq!(refused, vec![(ids[3], SendError::QueueFull(()))]);
    let mut wire = Vec::new();
    FrameEncoder::new()
        .encode(&Header::new(18, 4), b"new block", &mut wire)
        .unwrap();
    assert_eq!(server.poll_transmit(ids[0]), Some(&wire[..]));
}

#[test]
fn historical_login() {
    let cookie = Cookie::new(&[b'A'; 44]).unwrap();
    let client_cfg = NodeConfig {
        login_cookie: Some(cookie.clone()),
        ..NodeConfig::default()
    };
    let server_cfg = NodeConfig {
        require_login: Some(cookie),
        ..NodeConfig::default()
    };
    let (mut client, mut server, c, s) = connected(client_cfg, server_cfg.clone());
    // The login goes first, before what was queued.
    let first = client.poll_transmit(c).unwrap();
    let mut expected = vec![0x35, 0x00, 0x08, 0x01, 0x10, 0x00, 0x04, 0x12, 0x2C];
    expected.extend_from_slice(&[b'A'; 44]);
    assert_eq!(&first[..expected.len()], &expected[..]);
    client
        .send(t(0), c, msg!(3, 2, b"after login"), Priority::Normal)
        .unwrap();
    let (_, out) = pump(t(0), &mut client, &mut server, &[(c, s)]);
    let messages: Vec<&O> = out.iter().filter(|o| matches!(o, O::Message(..))).collect();
    assert_eq!(
        messages,
        [&O::Message(
            s,
            Header::new(3, 2),
            b"after login".to_vec(),
            vec![]
        )]
    );
    // Without the cookie the server closes.
    let mut other = N::new(t(0), server_cfg);
    let s2 = other.accept(t(0), addr(5, 1)).unwrap();
    let mut wire = Vec::new();
    FrameEncoder::new()
        .encode(&Header::new(3, 2), b"hi", &mut wire)
        .unwrap();
    other.handle_input(t(0), s2, &wire).unwrap();
    let out = drain(&mut other);
    assert!(
        out.iter()
            .any(|o| matches!(o, O::Event(_, e) if e.contains("LoginFailed"))),
        "{out:?}"
    );
    // And one that sends nothing is closed after 4 s.
    let s3 = other.accept(t(10), addr(6, 1)).unwrap();
    other.handle_timeout(t(14));
    assert!(drain(&mut other).contains(&O::Removed(s3, (0, 0))));
}

#[test]
fn connection_limits() {
    let cfg = NodeConfig {
        max_connections: NonZeroUsize::new(2).unwrap(),
        max_connections_per_ip: Some(NonZeroU32::new(1).unwrap()),
        ..NodeConfig::default()
    };
    let mut server = N::new(t(0), cfg);
    server.accept(t(0), addr(1, 1)).unwrap();
    assert_eq!(
        server.accept(t(0), addr(1, 2)),
        Err(Refused::TooManyFromAddress)
    );
    server.accept(t(0), addr(2, 1)).unwrap();
    assert_eq!(server.accept(t(0), addr(3, 1)), Err(Refused::Full));
    assert_eq!(
        server.connect(t(0), addr(4, 1)),
        Err(NodeError::TooManyConnections)
    );
}

#[test]
fn deadlines_are_never_stale() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    for ms in (0..1_000_000).step_by(13_131) {
        let now = Instant::from_millis(ms);
        client.handle_timeout(now);
        server.handle_timeout(now);
        assert!(client.poll_timeout().is_none_or(|at| at > now));
        assert!(server.poll_timeout().is_none_or(|at| at > now));
        pump(now, &mut client, &mut server, &[(c, s)]);
    }
    assert!(server.connection(s).is_some(), "pings kept it open");
}

// Regressions found in review.

#[test]
fn a_reused_slot_does_not_starve_another_connection() {
    let cfg = NodeConfig {
        max_connections: NonZeroUsize::new(2).unwrap(),
        ..NodeConfig::default()
    };
    let mut server = N::new(t(0), cfg);
    let mut client = N::new(t(0), NodeConfig::default());
    let a = server.accept(t(0), addr(2, 1)).unwrap();
    let cb = client.connect(t(0), addr(1, 1)).unwrap();
    drain(&mut client);
    let b = server.accept(t(0), addr(3, 1)).unwrap();
    client.handle_connected(t(0), cb).unwrap();
    drain(&mut server);
    server.close(t(1), a).unwrap();
    assert!(matches!(server.poll_output(), Some(Output::Event { .. })));
    // The application accepts at once; the new connection takes the freed slot later.
    let _ = server.accept(t(1), addr(4, 1));
    client
        .send(t(1), cb, msg!(5, 1, b"hello"), Priority::Normal)
        .unwrap();
    let (_, out) = pump(t(1), &mut client, &mut server, &[(cb, b)]);
    assert!(
        out.iter()
            .any(|o| matches!(o, O::Message(id, ..) if *id == b)),
        "{out:?}"
    );
}

#[test]
fn closed_reaches_the_watchers_and_the_id_works_until_the_next_poll() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let w = server.open_handle(Scope::Connection(s)).unwrap();
    pump(t(0), &mut client, &mut server, &[(c, s)]);
    server.handle_eof(t(1), s).unwrap();
    match server.poll_output() {
        Some(Output::Event {
            event: Event::Closed { .. },
            handles,
            ..
        }) => {
            assert!(handles.contains(w))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.peer(s), Some(addr(2, 40000)));
    let rest = drain(&mut server);
    assert_eq!(rest, vec![O::Disconnect(s), O::Removed(s, (0, 0))]);
    assert_eq!(server.peer(s), None);
}

#[test]
fn close_wins_over_a_reconnect() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    server
        .send(t(0), s, msg!(5, 1, b"y"), Priority::Normal)
        .unwrap();
    pump(t(0), &mut client, &mut server, &[(c, s)]);
    client.handle_eof(t(1), c).unwrap();
    client.close(t(1), c).unwrap();
    let out = drain(&mut client);
    assert!(out.contains(&O::Removed(c, (0, 0))), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, O::Reconnecting(..))),
        "{out:?}"
    );
}

#[test]
fn punishment_is_never_lost() {
    // On a connection waiting to reconnect.
    let mut n = N::new(t(0), NodeConfig::default());
    let c = n.connect(t(0), addr(1, 1)).unwrap();
    drain(&mut n);
    n.handle_connect_failed(t(0), c).unwrap();
    drain(&mut n);
    n.punish(t(0), c, 2000).unwrap();
    assert!(n.banned_until(addr(1, 1).ip()).is_some());
    let out = drain(&mut n);
    assert!(
        out.contains(&O::Removed(c, (0, 0))),
        "banned: no reconnect; {out:?}"
    );
    // Followed by a close.
    let s = n.accept(t(0), addr(2, 1)).unwrap();
    n.punish(t(0), s, 2000).unwrap();
    n.close(t(0), s).unwrap();
    assert!(n.banned_until(addr(2, 1).ip()).is_some());
    // Counted once.
    let s = n.accept(t(0), addr(3, 1)).unwrap();
    n.punish(t(0), s, 300).unwrap();
    drain(&mut n);
    assert_eq!(n.score(addr(3, 1).ip()), 300);
}

#[test]
fn loopback_does_not_fill_the_rate_log() {
    let cfg = NodeConfig {
        rate_limit: true,
        rate_log_len: NonZeroUsize::new(4).unwrap(),
        ..NodeConfig::default()
    };
    let mut n = N::new(t(0), cfg);
    let lo = SocketAddr::new(IpAddr::V4(core::net::Ipv4Addr::LOCALHOST), 1);
    assert!(n.accept(t(0), addr(9, 1)).is_ok());
    for _ in 0..4 {
        assert!(n.accept(t(1), lo).is_ok());
    }
    assert!(n.accept(t(2), addr(9, 2)).is_ok());
    assert_eq!(n.accept(t(3), addr(9, 3)), Err(Refused::RateLimited));
}

#[test]
fn bans_never_shrink_and_evictions_are_reported() {
    let cfg = NodeConfig {
        max_bans: NonZeroUsize::new(1).unwrap(),
        ..NodeConfig::default()
    };
    let mut n = N::new(t(0), cfg);
    let ip1 = addr(1, 0).ip();
    n.ban(t(0), ip1);
    let long = n.banned_until(ip1).unwrap();
    let short = BanRecord {
        ip: ip1,
        until_unix_secs: 1_000 + 10,
    };
    assert_eq!(n.import_bans(t(0), 1_000, [short, short]), 2);
    assert_eq!(n.banned_until(ip1), Some(long));
    drain(&mut n);
    n.ban(t(1), addr(2, 0).ip());
    let out = drain(&mut n);
    assert!(out.contains(&O::Unbanned(ip1)), "{out:?}");
}

#[test]
fn a_ban_stops_reconnects_to_that_address() {
    let mut n = N::new(t(0), NodeConfig::default());
    let c = n.connect(t(0), addr(1, 1)).unwrap();
    drain(&mut n);
    n.handle_connect_failed(t(0), c).unwrap();
    drain(&mut n);
    n.ban(t(0), addr(1, 1).ip());
    let out = drain(&mut n);
    assert!(out.contains(&O::Removed(c, (0, 0))), "{out:?}");
    n.handle_timeout(t(100));
    assert!(!drain(&mut n).iter().any(|o| matches!(o, O::Connect(..))));
}

#[test]
fn the_login_is_sent_once_per_connection_even_with_a_full_queue() {
    let cookie = Cookie::new(b"cookie").unwrap();
    let cfg = NodeConfig {
        login_cookie: Some(cookie),
        ..NodeConfig::default()
    };
    let mut n = N::new(t(0), cfg);
    let c = n.connect(t(0), addr(1, 1)).unwrap();
    for i in 0..20 {
        n.send(t(0), c, msg!(5, i, b""), Priority::High).unwrap();
    }
    drain(&mut n);
    n.handle_connected(t(0), c).unwrap();
    let first = n.poll_transmit(c).unwrap().to_vec();
    assert_eq!(
        &first[2..7],
        &[0x08, 0x01, 0x10, 0x00, 0x04],
        "the login first"
    );
    // The connection drops before anything is written: the next one logs in once.
    n.handle_eof(t(1), c).unwrap();
    drain(&mut n);
    n.handle_timeout(t(1));
    drain(&mut n);
    n.handle_connected(t(1), c).unwrap();
    let wire = n.poll_transmit(c).unwrap().to_vec();
    let logins = wire
        .windows(5)
        .filter(|w| *w == [0x08, 0x01, 0x10, 0x00, 0x04])
        .count();
    assert_eq!(logins, 1);
}

#[test]
fn connect_answers_without_a_connect_are_ignored() {
    let mut n = N::new(t(0), NodeConfig::default());
    let c = n.connect(t(0), addr(1, 1)).unwrap();
    // Before the Connect output was taken: ignored.
    n.handle_connect_failed(t(0), c).unwrap();
    assert_eq!(drain(&mut n), vec![O::Connect(c, addr(1, 1))]);
    n.handle_connect_failed(t(0), c).unwrap();
    n.handle_connect_failed(t(0), c).unwrap();
    let out = drain(&mut n);
    assert_eq!(out.len(), 1, "{out:?}");
}

// Regressions found in the audit.

/// The reconnect of an output list, if any: when, and the attempt.
fn reconnecting(out: &[O]) -> Option<(Instant, u32)> {
    out.iter().find_map(|o| match o {
        O::Reconnecting(_, at, attempt) => Some((*at, *attempt)),
        _ => None,
    })
}

#[test]
fn a_deferred_removal_never_hits_a_newer_connection() {
    for ban in [false, true] {
        let mut n = N::new(t(0), NodeConfig::default());
        let c = n.connect(t(0), addr(1, 1)).unwrap();
        assert_eq!(drain(&mut n), vec![O::Connect(c, addr(1, 1))]);
        // Closed (or banned) while the TCP connect is in flight.
        if ban {
            n.ban(t(1), addr(1, 1).ip());
        } else {
            n.close(t(1), c).unwrap();
        }
        // The application takes outputs up to the `Closed`...
        loop {
            match n.poll_output() {
                Some(Output::Event {
                    event: Event::Closed { .. },
                    ..
                }) => break,
                Some(_) => {}
                None => panic!("no Closed"),
            }
        }
        // ...then the connect fails, and a new peer comes in before the next poll.
        let _ = n.handle_connect_failed(t(1), c);
        let b = n.accept(t(1), addr(2, 1)).unwrap();
        let out = drain(&mut n);
        assert!(out.contains(&O::Removed(c, (0, 0))), "{out:?}");
        assert!(
            !out.iter()
                .any(|o| matches!(o, O::Removed(id, _) if *id == b)),
            "ban={ban}: {out:?}"
        );
        assert!(n.connection(b).is_some(), "ban={ban}");
        assert_eq!(n.connections().collect::<Vec<_>>(), vec![b]);
        assert!(n.handle_connect_failed(t(2), c).is_err());
    }
}

#[test]
fn a_peers_request_with_our_request_id_is_not_a_reply() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let service = server.open_handle(Scope::Node).unwrap();
    server.subscribe(service, 5, None).unwrap();
    // Both sides use `request`, so both number from 1, on different services.
    let mine = client
        .request(t(0), c, msg!(5, 0, b"client asks"), Duration::from_secs(30))
        .unwrap();
    let theirs = server
        .request(t(0), s, msg!(6, 0, b"server asks"), Duration::from_secs(30))
        .unwrap();
    assert_eq!(mine, theirs);
    let (client_out, server_out) = pump(t(0), &mut client, &mut server, &[(c, s)]);
    let request = |svc, body: &[u8]| {
        let mut h = Header::new(svc, 0);
        h.ints.set(tags::REQUEST_ID, mine.0).unwrap();
        (h, body.to_vec())
    };
    let (h, body) = request(5, b"client asks");
    assert!(
        server_out.contains(&O::Message(s, h, body, vec![service.index()])),
        "{server_out:?}"
    );
    // The server's request (service 6) carries our id but is not the reply to ours.
    let (h, body) = request(6, b"server asks");
    assert!(client_out.contains(&O::Message(c, h, body, vec![])));
    assert!(!client_out.iter().any(|o| matches!(o, O::Reply(..))));
    assert!(!server_out.iter().any(|o| matches!(o, O::Reply(..))));
    // The real replies match: a message on the same service, and a CommandFailed.
    let mut reply = Header::new(5, 1);
    reply.ints.set(tags::REQUEST_ID, mine.0).unwrap();
    server
        .send(t(1), s, Message::new(&reply, b"answer"), Priority::Normal)
        .unwrap();
    let mut failed = Header::new(0, 2);
    failed.ints.set(tags::REQUEST_ID, theirs.0).unwrap();
    client
        .send(
            t(1),
            c,
            Message::new(&failed, b"unsupported"),
            Priority::Normal,
        )
        .unwrap();
    let (client_out, server_out) = pump(t(1), &mut client, &mut server, &[(c, s)]);
    assert!(client_out.contains(&O::Reply(c, mine, b"answer".to_vec())));
    assert!(server_out.contains(&O::Reply(s, theirs, b"unsupported".to_vec())));
    assert_eq!((client.usage().requests, server.usage().requests), (0, 0));
}

#[test]
fn failed_connects_count_until_a_write_completes() {
    let mut n = N::new(t(0), NodeConfig::default());
    let c = n.connect(t(0), addr(1, 1)).unwrap();
    let mut now = t(0);
    // Two failed connects: 0 s, then 4 s.
    for expected in [(0, 1), (4, 2)] {
        drain(&mut n);
        n.handle_connect_failed(now, c).unwrap();
        let (at, attempt) = reconnecting(&drain(&mut n)).unwrap();
        assert_eq!(((at - now).as_secs(), attempt), expected);
        now = at;
        n.handle_timeout(now);
    }
    // Connected, nothing written: a connect is no success yet (spec §8.2). The drop of a
    // connection that lived long is healthy: at once.
    drain(&mut n);
    n.handle_connected(now, c).unwrap();
    drain(&mut n);
    now = now + Duration::from_secs(30);
    n.handle_eof(now, c).unwrap();
    assert_eq!(reconnecting(&drain(&mut n)), Some((now, 0)));
    n.handle_timeout(now);
    drain(&mut n);
    // The count goes on from 2.
    n.handle_connect_failed(now, c).unwrap();
    let (at, attempt) = reconnecting(&drain(&mut n)).unwrap();
    assert_eq!(((at - now).as_secs(), attempt), (13, 3));
    now = at;
    n.handle_timeout(now);
    drain(&mut n);
    // A completed write ends the run.
    n.handle_connected(now, c).unwrap();
    n.send(now, c, msg!(1, 1, b"x"), Priority::Normal).unwrap();
    drain(&mut n);
    let len = n.poll_transmit(c).unwrap().len();
    n.consume_transmit(c, len);
    now = now + Duration::from_secs(30);
    n.handle_eof(now, c).unwrap();
    assert_eq!(reconnecting(&drain(&mut n)), Some((now, 0)));
    n.handle_timeout(now);
    drain(&mut n);
    n.handle_connect_failed(now, c).unwrap();
    assert_eq!(reconnecting(&drain(&mut n)), Some((now, 1)));
}

#[test]
fn a_peer_that_accepts_and_drops_at_once_is_backed_off_even_after_traffic() {
    let (mut client, mut server, c, mut s) =
        connected(NodeConfig::default(), NodeConfig::default());
    let mut now = t(0);
    let mut delays = Vec::new();
    for round in 0..6u16 {
        // Both ways: a write completes and a frame comes in; then the peer drops at once.
        client
            .send(now, c, msg!(1, 1, b"hello"), Priority::Normal)
            .unwrap();
        server
            .send(now, s, msg!(1, 2, b"bye"), Priority::Normal)
            .unwrap();
        let (out, _) = pump(now, &mut client, &mut server, &[(c, s)]);
        assert!(out.iter().any(|o| matches!(o, O::Message(..))));
        let dropped = now + Duration::from_secs(1);
        client.handle_eof(dropped, c).unwrap();
        let (at, attempt) = reconnecting(&drain(&mut client)).unwrap();
        delays.push(((at - dropped).as_secs(), attempt));
        now = at;
        client.handle_timeout(now);
        assert_eq!(drain(&mut client), vec![O::Connect(c, addr(1, 1235))]);
        s = server.accept(now, addr(2, 41000 + round)).unwrap();
        client.handle_connected(now, c).unwrap();
    }
    assert_eq!(
        delays,
        vec![(0, 1), (4, 2), (13, 3), (32, 4), (44, 5), (44, 6)]
    );
    // A connection that stays up is healthy again: the next drop reconnects at once.
    pump(now, &mut client, &mut server, &[(c, s)]);
    let dropped = now + Duration::from_secs(60);
    client.handle_eof(dropped, c).unwrap();
    assert_eq!(reconnecting(&drain(&mut client)), Some((dropped, 0)));
}

#[test]
fn huge_settings_do_not_overflow() {
    let cfg = NodeConfig {
        max_connections: NonZeroUsize::MAX,
        max_connections_per_ip: Some(NonZeroU32::MAX),
        ban_threshold: NonZeroU32::MAX,
        ban_duration: Duration::MAX,
        score_decay_per_hour: u32::MAX,
        max_bans: NonZeroUsize::MAX,
        max_scores: NonZeroUsize::MAX,
        rate_limit: true,
        rate_log_len: NonZeroUsize::MAX,
        max_allowed: NonZeroUsize::MAX,
        reconnect_after_drop: Duration::MAX,
        stable_after: Duration::MAX,
        max_pending_requests: NonZeroUsize::MAX,
        ..NodeConfig::default()
    };
    let (mut client, mut server, c, s) = connected(cfg.clone(), cfg);
    let r = client
        .request(t(0), c, msg!(1, 0, b""), Duration::MAX)
        .unwrap();
    pump(t(0), &mut client, &mut server, &[(c, s)]);
    server.punish(t(1), s, u32::MAX).unwrap();
    server.ban(t(1), addr(9, 0).ip());
    let record = BanRecord {
        ip: addr(8, 0).ip(),
        until_unix_secs: u64::MAX,
    };
    assert_eq!(server.import_bans(t(1), 0, [record]), 1);
    assert!(server.allow(addr(7, 0).ip()));
    drain(&mut server);
    client.handle_eof(t(2), c).unwrap();
    let mut out = drain(&mut client);
    assert!(out.contains(&O::Reconnecting(c, Instant::MAX, 1)));
    client.handle_timeout(Instant::MAX);
    server.handle_timeout(Instant::MAX);
    out.extend(drain(&mut client));
    drain(&mut server);
    client.close(Instant::MAX, c).unwrap();
    out.extend(drain(&mut client));
    assert!(
        out.iter()
            .any(|o| matches!(o, O::RequestFailed(id, req, _) if (*id, *req) == (c, r))),
        "{out:?}"
    );
}

/// A drop fails the requests the old socket took whole (their replies could only have come
/// on it) and keeps those still queued, a partly written one among them: they go out whole
/// after the reconnect and are answered.
#[test]
fn a_drop_fails_the_requests_written_and_keeps_the_queued() {
    let cfg = NodeConfig::default();
    let (mut client, mut server, c, _) = connected(cfg.clone(), cfg);
    let service = server.open_handle(Scope::Node).unwrap();
    server.subscribe(service, 3, None).unwrap();
    let ask = |client: &mut N, i: i32| {
        client
            .request(t(0), c, msg!(3, i, &[i as u8; 50]), Duration::from_secs(60))
            .unwrap()
    };
    let written = ask(&mut client, 1);
    let data = client.poll_transmit(c).unwrap().to_vec();
    client.consume_transmit(c, data.len());
    let partly = ask(&mut client, 2);
    let queued = ask(&mut client, 3);
    // A message of the application's own that carries the same RequestId (a reply to the
    // peer's request 1, say), still queued: it does not keep the written request alive.
    let own = Header::new(3, 7)
        .with_int(tags::REQUEST_ID, written.0)
        .unwrap();
    client
        .send(t(0), c, Message::new(&own, b""), Priority::Normal)
        .unwrap();
    let n = client.poll_transmit(c).unwrap().len();
    assert!(n > 10);
    client.consume_transmit(c, 10);
    drain(&mut client);
    client.handle_eof(t(1), c).unwrap();
    let out = drain(&mut client);
    let failed: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            O::RequestFailed(id, r, e) => Some((*id, *r, *e)),
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(c, written, RequestError::Closed)], "{out:?}");
    // The reconnect: both queued requests go out whole, and their replies are matched.
    let O::Reconnecting(_, at, _) = out
        .iter()
        .find(|o| matches!(o, O::Reconnecting(..)))
        .unwrap()
    else {
        unreachable!()
    };
    client.handle_timeout(*at);
    drain(&mut client);
    client.handle_connected(*at, c).unwrap();
    let s2 = server.accept(*at, addr(2, 40001)).unwrap();
    let (_, got) = pump(*at, &mut client, &mut server, &[(c, s2)]);
    let asked: Vec<Header> = got
        .iter()
        .filter_map(|o| match o {
            O::Message(_, h, ..) => Some(*h),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked.iter().map(|h| h.message_id).collect::<Vec<_>>(),
        [Some(2), Some(3), Some(7)],
        "{got:?}"
    );
    for h in &asked[..2] {
        let mut reply = Header::new(3, h.message_id.unwrap() + 1);
        reply.ints = h.ints;
        server
            .send(*at, s2, Message::new(&reply, b"ok"), Priority::Normal)
            .unwrap();
    }
    let (out, _) = pump(*at, &mut client, &mut server, &[(c, s2)]);
    let replied: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            O::Reply(_, r, _) => Some(*r),
            _ => None,
        })
        .collect();
    assert_eq!(replied, [partly, queued], "{out:?}");
}

#[test]
fn a_refused_request_comes_back_as_given() {
    let (mut client, _server, c, _s) = connected(NodeConfig::default(), NodeConfig::default());
    client.close(t(0), c).unwrap();
    let header = Header::new(3, 0).with_int(tags::USER_TAG1, 7).unwrap();
    let body = b"question";
    match client.request(t(0), c, Message::new(&header, body), Duration::from_secs(1)) {
        Err(SendError::Closed(m)) => {
            assert!(core::ptr::eq(m.header, &header) && core::ptr::eq(m.body, body));
            assert_eq!(m.header.request_id(), None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_whose_header_is_full_is_refused_as_given() {
    let (mut client, _server, c, _s) = connected(NodeConfig::default(), NodeConfig::default());
    let mut header = Header::new(3, 0);
    for tag in 0..crate::header::MAX_HEADER_INTS as u32 {
        header.ints.set(20 + tag, 1).unwrap();
    }
    let message = Message::new(&header, b"");
    match client.request(t(0), c, message, Duration::from_secs(1)) {
        Err(SendError::Invalid(m, crate::frame::EncodeError::HeaderFull)) => {
            assert!(core::ptr::eq(m.header, &header));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.usage().requests, 0);
}

#[test]
fn request_failures_are_never_lost() {
    let cfg = NodeConfig {
        max_connections: NonZeroUsize::MIN,
        max_bans: NonZeroUsize::MIN,
        max_pending_requests: NonZeroUsize::new(2).unwrap(),
        ..NodeConfig::default()
    };
    let (mut client, _server, c, _s) = connected(cfg, NodeConfig::default());
    drain(&mut client);
    // The application makes requests that time out, and does not poll outputs for a while.
    let mut accepted = Vec::new();
    // (80 s: before the first ping, whose pong never comes here.)
    for i in 0..80 {
        match client.request(t(i), c, msg!(1, 0, b""), Duration::from_secs(1)) {
            Ok(r) => accepted.push(r),
            Err(SendError::QueueFull(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        client.handle_timeout(t(i + 1));
    }
    assert_eq!(
        accepted.len(),
        2,
        "failures not polled yet count as pending"
    );
    assert!(client.usage().queued_outputs <= 4 + 2 + 2 + 64);
    let failed: Vec<RequestId> = drain(&mut client)
        .into_iter()
        .filter_map(|o| match o {
            O::RequestFailed(_, r, RequestError::Timeout) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(failed, accepted);
    assert_eq!(client.usage().dropped_outputs, 0);
    // Once they are out, requests are taken again.
    assert!(
        client
            .request(t(300), c, msg!(1, 0, b""), Duration::from_secs(1))
            .is_ok()
    );
}

#[test]
fn an_import_reports_only_the_bans_it_pushed_out() {
    let cfg = NodeConfig {
        max_bans: NonZeroUsize::new(2).unwrap(),
        ..NodeConfig::default()
    };
    let mut n = N::new(t(0), cfg);
    let ip = |b: u8| addr(b, 0).ip();
    let rec = |b: u8, secs: u64| BanRecord {
        ip: ip(b),
        until_unix_secs: 1_000 + secs,
    };
    n.ban(t(0), ip(1));
    drain(&mut n);
    // 2 is added, pushed out by 3, which is pushed out by 4: the application never heard of
    // 2 and 3 as bans, so they do not end either.
    assert_eq!(
        n.import_bans(t(0), 1_000, [rec(2, 100), rec(3, 200), rec(4, 300)]),
        1
    );
    assert_eq!(drain(&mut n), vec![]);
    assert!(n.banned_until(ip(4)).is_some() && n.banned_until(ip(1)).is_some());
    // A later import that pushes out bans from before reports every one of them.
    assert_eq!(
        n.import_bans(t(0), 1_000, [rec(5, 200_000), rec(6, 200_000)]),
        2
    );
    assert_eq!(drain(&mut n), vec![O::Unbanned(ip(4)), O::Unbanned(ip(1))]);
    // Many at once: no notice is cut off.
    let cfg = NodeConfig {
        max_bans: NonZeroUsize::new(40).unwrap(),
        ..NodeConfig::default()
    };
    let mut n = N::new(t(0), cfg);
    for b in 0..40 {
        n.ban(t(0), addr(b, 0).ip());
    }
    drain(&mut n);
    let records: Vec<BanRecord> = (100..140).map(|b| rec(b, 200_000)).collect();
    assert_eq!(n.import_bans(t(0), 1_000, records), 40);
    let out = drain(&mut n);
    assert_eq!(out.len(), 40);
    assert!(out.iter().all(|o| matches!(o, O::Unbanned(_))));
}

#[test]
fn allowed_addresses_skip_admission_and_scoring() {
    let cfg = NodeConfig {
        rate_limit: true,
        max_connections_per_ip: Some(NonZeroU32::new(3).unwrap()),
        ..NodeConfig::default()
    };
    let mut n = N::new(t(0), cfg);
    let ip = addr(7, 0).ip();
    n.ban(t(0), ip);
    drain(&mut n);
    let until = n.banned_until(ip).unwrap();
    assert!(n.allow(ip));
    // Banned, five at once (over the per-IP limit and the rate limiter): all accepted.
    let ids: Vec<ConnId> = (0..5)
        .map(|i| n.accept(t(1), addr(7, 100 + i)).unwrap())
        .collect();
    // Neither protocol errors nor punishment score it.
    n.handle_input(t(1), ids[0], b"GET / HTTP/1.1\r\n").unwrap();
    n.punish(t(1), ids[1], 5_000).unwrap();
    let out = drain(&mut n);
    assert_eq!(n.score(ip), 0);
    assert_eq!(n.banned_until(ip), Some(until), "no new ban");
    assert!(!out.iter().any(|o| matches!(o, O::Banned(..))), "{out:?}");
    assert!(n.connection(ids[1]).is_some());
    // Off the list, every check applies again.
    n.disallow(ip);
    assert_eq!(n.accept(t(2), addr(7, 200)), Err(Refused::Banned { until }));
    n.unban(ip);
    assert_eq!(
        n.accept(t(2), addr(7, 200)),
        Err(Refused::TooManyFromAddress)
    );
    for &id in &ids[1..] {
        n.close(t(2), id).unwrap();
    }
    drain(&mut n);
    assert!(n.accept(t(3), addr(7, 300)).is_ok());
    assert!(n.accept(t(3), addr(7, 301)).is_ok());
    assert_eq!(n.accept(t(3), addr(7, 302)), Err(Refused::RateLimited));
    n.punish(t(3), ids[1], 1).unwrap_err();
    let s = n.connections().last().unwrap();
    n.punish(t(3), s, 10).unwrap();
    assert_eq!(n.score(ip), 10);
}

#[test]
fn a_node_with_fixed_storage_exchanges_messages_and_requests() {
    type F = Node<crate::storage::Fixed>;
    let (mut client, mut server, c, s) =
        connected_with::<crate::storage::Fixed>(NodeConfig::default(), NodeConfig::default());
    let service = server.open_handle(Scope::Node).unwrap();
    server.subscribe(service, 3, None).unwrap();
    client
        .send(t(0), c, msg!(3, 7, b"fixed"), Priority::Normal)
        .unwrap();
    let r = client
        .request(t(0), c, msg!(3, 0, b"ask"), Duration::from_secs(5))
        .unwrap();
    let (_, out) = pump(t(0), &mut client, &mut server, &[(c, s)]);
    assert!(out.contains(&O::Message(
        s,
        Header::new(3, 7),
        b"fixed".to_vec(),
        vec![service.index()]
    )));
    let asked = out
        .iter()
        .find_map(|o| match o {
            O::Message(_, h, ..) if h.message_id == Some(0) => Some(*h),
            _ => None,
        })
        .unwrap();
    let mut reply = Header::new(3, 1);
    reply.ints = asked.ints;
    server
        .send(t(1), s, Message::new(&reply, b"answer"), Priority::Normal)
        .unwrap();
    let (out, _) = pump(t(1), &mut client, &mut server, &[(c, s)]);
    assert!(out.contains(&O::Reply(c, r, b"answer".to_vec())));
    let usage = F::usage(&client);
    assert_eq!((usage.connections, usage.requests), (1, 0));
}

#[test]
fn a_client_pinged_by_the_server_is_removed_without_reconnecting() {
    let (mut client, _server, c, _s) = connected(NodeConfig::default(), NodeConfig::default());
    drain(&mut client);
    client
        .handle_input(t(1), c, &crate::frame::PING_FRAME)
        .unwrap();
    let out = drain(&mut client);
    assert!(
        out.iter()
            .any(|o| matches!(o, O::Event(_, e) if e.contains("PeerPinged"))),
        "{out:?}"
    );
    assert!(out.contains(&O::Disconnect(c)));
    assert!(out.contains(&O::Removed(c, (0, 0))), "{out:?}");
    assert!(reconnecting(&out).is_none(), "{out:?}");
    client.handle_timeout(t(100));
    assert_eq!(drain(&mut client), vec![]);
    assert!(client.is_empty());
}

#[test]
fn replies_and_messages_in_pieces_are_matched_and_routed() {
    let chunks = NodeConfig {
        connection: Config {
            sequence_delivery: crate::connection::SequenceDelivery::Chunks,
            ..Config::default()
        },
        ..NodeConfig::default()
    };
    let (mut client, mut server, c, s) = connected(chunks, NodeConfig::default());
    let service = client.open_handle(Scope::Node).unwrap();
    client.subscribe(service, 5, None).unwrap();
    let r = client
        .request(t(0), c, msg!(5, 0, b"ask"), Duration::from_secs(5))
        .unwrap();
    let (_, out) = pump(t(0), &mut client, &mut server, &[(c, s)]);
    let asked = out
        .iter()
        .find_map(|o| match o {
            O::Message(_, h, ..) => Some(*h),
            _ => None,
        })
        .unwrap();
    // A reply over 8000 bytes travels as a sequence, and a big message that is no reply.
    let big = [7u8; 20_000];
    let mut reply = Header::new(5, 1);
    reply.ints = asked.ints;
    server
        .send(t(1), s, Message::new(&reply, &big), Priority::Normal)
        .unwrap();
    server
        .send(t(1), s, msg!(5, 9, &big), Priority::Normal)
        .unwrap();
    let (out, _) = pump(t(1), &mut client, &mut server, &[(c, s)]);
    let parts: Vec<&String> = out
        .iter()
        .filter_map(|o| match o {
            O::ReplyPart(id, req, e) if (*id, *req) == (c, r) => Some(e),
            _ => None,
        })
        .collect();
    assert!(
        !parts.is_empty() && parts[0].starts_with("SequenceStart"),
        "{out:?}"
    );
    assert!(parts[1].starts_with("SequenceChunk"), "{out:?}");
    assert_eq!(
        parts.last().unwrap().as_str(),
        "SequenceEnd { received: 20000 }"
    );
    assert_eq!(client.usage().requests, 0);
    // The other message goes to the service, piece by piece.
    let routed: Vec<&String> = out
        .iter()
        .filter_map(|o| match o {
            O::Event(id, e) if *id == c && e.starts_with("Sequence") => Some(e),
            _ => None,
        })
        .collect();
    assert!(routed.len() >= 4, "{out:?}");
    server
        .send(t(2), s, msg!(5, 11, &big), Priority::Normal)
        .unwrap();
    carry(t(2), &mut server, s, &mut client, c);
    let mut pieces = 0;
    while let Some(o) = client.poll_output() {
        if let Output::Event {
            event: Event::SequenceStart { .. } | Event::SequenceChunk(_) | Event::SequenceEnd { .. },
            handles,
            ..
        } = o
        {
            assert!(handles.contains(service), "{handles:?}");
            pieces += 1;
        }
    }
    assert!(pieces >= 4);
    // No false timeout later.
    client.handle_timeout(t(10));
    assert!(
        !drain(&mut client)
            .iter()
            .any(|o| matches!(o, O::RequestFailed(..)))
    );
    // A reply cut off halfway fails the request at once.
    let r2 = client
        .request(t(10), c, msg!(5, 2, b"ask"), Duration::from_secs(60))
        .unwrap();
    let (_, out) = pump(t(10), &mut client, &mut server, &[(c, s)]);
    let asked = out
        .iter()
        .find_map(|o| match o {
            O::Message(_, h, ..) => Some(*h),
            _ => None,
        })
        .unwrap();
    let mut reply = Header::new(5, 3);
    reply.ints = asked.ints;
    server
        .send(t(11), s, Message::new(&reply, &big), Priority::Normal)
        .unwrap();
    let wire = server.poll_transmit(s).unwrap()[..9_000].to_vec();
    client.handle_input(t(11), c, &wire).unwrap();
    client.handle_eof(t(11), c).unwrap();
    let out = drain(&mut client);
    assert!(
        out.iter().any(
            |o| matches!(o, O::ReplyPart(_, req, e) if *req == r2 && e.starts_with("SequenceStart"))
        ),
        "{out:?}"
    );
    assert!(
        out.contains(&O::RequestFailed(c, r2, RequestError::Closed)),
        "{out:?}"
    );
}

/// Spec §5: "there is no rate limit on pings".
#[test]
fn a_client_pinging_four_times_a_second_is_answered_and_never_punished() {
    let mut client_cfg = NodeConfig::default();
    client_cfg.connection.ping_interval = Duration::from_millis(250);
    let (mut client, mut server, c, s) = connected(client_cfg, NodeConfig::default());
    let mut client_out = Vec::new();
    let mut server_out = Vec::new();
    for step in 0..=(4 * 180u64) {
        let now = Instant::from_millis(step * 250);
        client.handle_timeout(now);
        server.handle_timeout(now);
        let (a, b) = pump(now, &mut client, &mut server, &[(c, s)]);
        client_out.extend(a);
        server_out.extend(b);
    }
    let pongs = client_out
        .iter()
        .filter(|o| matches!(o, O::Event(_, e) if e.starts_with("Pong")))
        .count();
    assert_eq!(pongs, 4 * 180);
    let punished: Vec<_> = server_out
        .iter()
        .filter(|o| {
            matches!(o, O::Event(_, e) if e.contains("Misbehaved") || e.contains("Closed"))
                || matches!(o, O::Banned(..))
        })
        .collect();
    assert!(punished.is_empty(), "{punished:?}");
    assert_eq!(server.score(addr(2, 40000).ip()), 0);
}

#[test]
fn an_imported_ban_closes_the_live_connections_of_its_address() {
    let (_client, mut server, _c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let (_other, mut server2, _, s2) = connected(NodeConfig::default(), NodeConfig::default());
    drain(&mut server);
    drain(&mut server2);
    let record = BanRecord {
        ip: addr(2, 0).ip(),
        until_unix_secs: 1_000_000 + 3600,
    };
    assert_eq!(server.import_bans(t(1), 1_000_000, [record]), 1);
    let out = drain(&mut server);
    assert!(out.contains(&O::Disconnect(s)), "{out:?}");
    // A ban of another address leaves it alone.
    let record = BanRecord {
        ip: addr(9, 0).ip(),
        until_unix_secs: 1_000_000 + 3600,
    };
    assert_eq!(server2.import_bans(t(1), 1_000_000, [record]), 1);
    assert!(!drain(&mut server2).contains(&O::Disconnect(s2)));
}

/// Spec §3.2: "messageId(): -1 if absent".
#[test]
fn a_subscription_to_message_minus_one_takes_messages_without_an_id() {
    let (_client, mut server, _c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let h = server.open_handle(Scope::Node).unwrap();
    server.subscribe(h, 5, Some(-1)).unwrap();
    drain(&mut server);
    server
        .handle_input(t(0), s, &[0x05, 0x00, 0x08, 0x05, 0x04])
        .unwrap();
    let out = drain(&mut server);
    let got: Vec<&O> = out.iter().filter(|o| matches!(o, O::Message(..))).collect();
    assert!(
        matches!(got[..], [O::Message(_, _, _, handles)] if handles == &vec![h.index()]),
        "{out:?}"
    );
}

#[test]
fn a_ban_closes_the_connections_of_its_own_address_only() {
    // An allowed address is admitted despite its ban; banning another address leaves it.
    let mut server = N::new(t(0), NodeConfig::default());
    let a = addr(2, 0).ip();
    server.ban(t(0), a);
    assert!(server.allow(a));
    let s = server.accept(t(1), addr(2, 40000)).unwrap();
    drain(&mut server);
    server.ban(t(2), addr(9, 0).ip());
    assert!(!drain(&mut server).contains(&O::Disconnect(s)));
    // An application's own connection to a banned address, the same with an import.
    let mut n = N::new(t(0), NodeConfig::default());
    n.ban(t(0), addr(1, 0).ip());
    let c = n.connect(t(0), addr(1, 1235)).unwrap();
    n.handle_connected(t(0), c).unwrap();
    drain(&mut n);
    let record = BanRecord {
        ip: addr(9, 0).ip(),
        until_unix_secs: 1_000_000 + 3600,
    };
    n.import_bans(t(1), 1_000_000, [record]);
    assert!(!drain(&mut n).contains(&O::Disconnect(c)));
}

#[test]
fn a_ban_that_a_full_table_drops_still_closes_its_connections() {
    let config = NodeConfig {
        max_bans: NonZeroUsize::new(1).unwrap(),
        ..NodeConfig::default()
    };
    let mut server = N::new(t(0), config);
    server.ban(t(1), addr(9, 0).ip());
    let s = server.accept(t(1), addr(2, 40000)).unwrap();
    drain(&mut server);
    // To the threshold in the same instant: the new ban ends no later than the one held.
    server.punish(t(1), s, 1000).unwrap();
    assert!(drain(&mut server).contains(&O::Disconnect(s)));
}
