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
    RequestFailed(ConnId, RequestId, RequestError),
    Reconnecting(ConnId, Instant, u32),
    Removed(ConnId, (usize, usize)),
    Banned(IpAddr, Instant),
    Unbanned(IpAddr),
}

fn drain(n: &mut N) -> Vec<O> {
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
                message.header,
                message.body.to_vec(),
                handles.indices().collect(),
            ),
            Output::Reply {
                id,
                request,
                message,
            } => O::Reply(id, request, message.body.to_vec()),
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
fn pump(now: Instant, a: &mut N, b: &mut N, links: &[(ConnId, ConnId)]) -> (Vec<O>, Vec<O>) {
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

fn carry(now: Instant, from: &mut N, x: ConnId, to: &mut N, y: ConnId) -> bool {
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
    let mut client = N::new(t(0), client_cfg);
    let mut server = N::new(t(0), server_cfg);
    let c = client.connect(t(0), addr(1, 1235)).unwrap();
    assert_eq!(drain(&mut client), vec![O::Connect(c, addr(1, 1235))]);
    let s = server.accept(t(0), addr(2, 40000)).unwrap();
    client.handle_connected(t(0), c).unwrap();
    (client, server, c, s)
}

fn msg(svc: i32, id: i32, body: &[u8]) -> Message<'_> {
    Message::new(Header::new(svc, id), body)
}

#[test]
fn messages_are_routed_to_handles() {
    let (mut client, mut server, c, s) = connected(NodeConfig::default(), NodeConfig::default());
    let service = server.open_handle(Scope::Node).unwrap();
    server.subscribe(service, 3, None).unwrap();
    let watcher = server.open_handle(Scope::Connection(s)).unwrap();
    server.subscribe(watcher, 3, Some(2)).unwrap();
    client
        .send(t(0), c, msg(3, 2, b"a"), Priority::Normal)
        .unwrap();
    client
        .send(t(0), c, msg(3, 4, b"b"), Priority::Normal)
        .unwrap();
    client
        .send(t(0), c, msg(9, 0, b"c"), Priority::Normal)
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
        server.send(t(1), s, msg(1, 1, b""), Priority::Normal),
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
        .request(t(0), c, msg(0, 0, b""), Duration::from_secs(5))
        .unwrap();
    let r2 = client
        .request(t(0), c, msg(0, 0, b""), Duration::from_secs(5))
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
        .send(t(1), s, Message::new(reply, b"v"), Priority::Normal)
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
        .send(t(0), c, msg(1, 1, b"queued"), Priority::Normal)
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
        .send(t(0), c, msg(1, 1, b"one"), Priority::Normal)
        .unwrap();
    server
        .send(t(0), s, msg(1, 2, b"hello"), Priority::Normal)
        .unwrap();
    pump(t(0), &mut client, &mut server, &[(c, s)]);
    // Queued while the connection drops, partly written.
    let big = [5u8; 20_000];
    client
        .send(t(1), c, msg(1, 2, &big), Priority::Normal)
        .unwrap();
    let n = client.poll_transmit(c).unwrap().len();
    client.consume_transmit(c, n / 2);
    client.handle_eof(t(2), c).unwrap();
    let out = drain(&mut client);
    assert!(out.contains(&O::Disconnect(c)));
    assert!(out.contains(&O::Reconnecting(c, t(2), 0)), "{out:?}");
    client.handle_timeout(t(2));
    assert_eq!(drain(&mut client), vec![O::Connect(c, addr(1, 1235))]);
    let s2 = server.accept(t(2), addr(2, 40001)).unwrap();
    client.handle_connected(t(2), c).unwrap();
    let (_, out) = pump(t(2), &mut client, &mut server, &[(c, s2)]);
    assert!(out.contains(&O::Message(s2, Header::new(1, 2), big.to_vec(), vec![])));
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
            msg(1, 1, b"fills the queue"),
            Priority::Normal,
        )
        .unwrap();
    let mut refused = Vec::new();
    let n = server.broadcast(
        t(0),
        &msg(18, 4, b"new block"),
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
        .send(t(0), c, msg(3, 2, b"after login"), Priority::Normal)
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
        .send(t(1), cb, msg(5, 1, b"hello"), Priority::Normal)
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
        .send(t(0), s, msg(5, 1, b"y"), Priority::Normal)
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
        n.send(t(0), c, msg(5, i, b""), Priority::High).unwrap();
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
