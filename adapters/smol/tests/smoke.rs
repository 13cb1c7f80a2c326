//! A smoke test: echo of small and large messages, and a subscription.
use flowee_smol::{Client, Header, Message, NodeConfig, Priority, Request, Responder, Server};
use std::time::Duration;

mod common;

fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
    let _ = out.reply(Message::new(req.message.header, req.message.body));
}

#[test]
fn echo_small_and_large() {
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        let reply = client
            .request(
                Message::new(&Header::new(3, 2), b"hello"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&reply.body[..], b"hello");
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| i as u8).collect();
        let reply = client
            .request(
                Message::new(&Header::new(3, 4), &big),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(reply.body == big);
        let mut sub = client.subscribe(3).unwrap();
        client
            .send(Message::new(&Header::new(3, 7), b"sub"), Priority::Normal)
            .unwrap();
        let m = sub.next().await.unwrap();
        assert_eq!(&m.body[..], b"sub");
        client.close().await;
        server.shutdown().await;
    });
}

/// A client whose connection hands sequences out chunk by chunk (as on fixed storage) still
/// gets a large reply whole from `request`: the service layer joins the pieces.
#[test]
fn chunked_reply_comes_back_whole() {
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let mut config = NodeConfig::default();
        config.connection.sequence_delivery = flowee_proto::connection::SequenceDelivery::Chunks;
        let client = Client::connect(server.local_addr(), config).await.unwrap();
        let big: Vec<u8> = (0..100_000usize).map(|i| (i * 7) as u8).collect();
        for id in [2, 4] {
            let reply = client
                .request(
                    Message::new(&Header::new(3, id), &big),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(reply.header.message_id, Some(id));
            assert!(reply.body == big, "{} bytes back", reply.body.len());
        }
        client.close().await;
        server.shutdown().await;
    });
}

/// Sockets read straight into the node's receive buffer: with the smallest buffer on both
/// ends (one maximum frame), every read is cut to the room left by a partial frame, and a
/// whole window of small messages and sequences still comes back whole and in order.
#[test]
fn the_smallest_receive_buffers_still_carry_everything() {
    smol::block_on(async {
        let mut config = NodeConfig::default();
        config.connection.receive_buffer = std::num::NonZeroUsize::new(9000).unwrap();
        let server = Server::bind("127.0.0.1:0", config.clone()).await.unwrap();
        server.handle(3, None, echo).unwrap();
        let client = Client::connect(server.local_addr(), config).await.unwrap();
        let mut replies = client.subscribe(3).unwrap();
        let bodies: Vec<Vec<u8>> = (0..400usize)
            .map(|i| {
                let len = if i % 10 == 0 { 30_000 + i } else { 1 + i * 13 };
                (0..len).map(|b| (b * 31 + i) as u8).collect()
            })
            .collect();
        for (i, body) in bodies.iter().enumerate() {
            client
                .send(
                    Message::new(&Header::new(3, i as i32), body),
                    Priority::Normal,
                )
                .unwrap();
            client.drain_to(256 * 1024).await;
        }
        for (i, body) in bodies.iter().enumerate() {
            let m = replies.next().await.unwrap();
            assert_eq!(m.header.message_id, Some(i as i32));
            assert!(m.body == *body, "reply {i}: {} bytes", m.body.len());
        }
        client.close().await;
        server.shutdown().await;
    });
}

/// Sends from plain threads are written by the sending thread while the socket takes them,
/// and by the connection's task once it is full; interleaved, they never repeat or skip a byte.
#[test]
fn streams_sent_from_other_threads_arrive_whole_and_in_order() {
    const SENDERS: usize = 3;
    const EACH: usize = 100;
    fn body(t: usize, i: usize) -> Vec<u8> {
        let mut b: Vec<u8> = (0..48 * 1024 + i)
            .map(|j| (t * 31 + i * 7 + j) as u8)
            .collect();
        b[0] = t as u8;
        b[1..5].copy_from_slice(&(i as u32).to_le_bytes());
        b
    }
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        let mut echoes = client.subscribe(3).unwrap();
        let senders: Vec<_> = (0..SENDERS)
            .map(|t| {
                let client = client.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        client
                            .send(
                                Message::new(&Header::new(3, 0), &body(t, i)),
                                Priority::Normal,
                            )
                            .unwrap();
                    }
                })
            })
            .collect();
        let mut next = [0usize; SENDERS];
        for _ in 0..SENDERS * EACH {
            let m = echoes.next().await.unwrap();
            let t = usize::from(m.body[0]);
            let i = u32::from_le_bytes(m.body[1..5].try_into().unwrap()) as usize;
            assert_eq!(i, next[t], "sender {t}: out of order");
            assert!(
                m.body[..] == body(t, i)[..],
                "sender {t} message {i}: wrong body"
            );
            next[t] += 1;
        }
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(echoes.lost(), 0);
        client.close().await;
        server.shutdown().await;
    });
}

/// A broadcast to more peers than one pump writes to at once: the first are written by the
/// broadcasting thread, the tasks of the rest are woken, and every peer gets it.
#[test]
fn a_broadcast_to_many_peers_reaches_every_one() {
    const PEERS: usize = 80;
    smol::block_on(async {
        let server = common::server_for_3(echo).await;
        let mut events = server.events();
        let mut clients = Vec::new();
        for _ in 0..PEERS {
            let client = Client::connect(server.local_addr(), NodeConfig::default())
                .await
                .unwrap();
            let sub = client.subscribe(9).unwrap();
            clients.push((client, sub));
        }
        let mut connected = 0;
        while connected < PEERS {
            let e = events.next().await.unwrap();
            connected += usize::from(matches!(e, flowee_smol::NodeEvent::Connected { .. }));
        }
        let (queued, refused) = server.broadcast(
            Message::new(&Header::new(9, 1), b"to all"),
            Priority::Normal,
        );
        assert_eq!((queued, refused.len()), (PEERS, 0));
        for (i, (_, sub)) in clients.iter_mut().enumerate() {
            let m = smol::future::or(async { sub.next().await }, async {
                smol::Timer::after(Duration::from_secs(10)).await;
                None
            })
            .await
            .unwrap_or_else(|| panic!("peer {i} got nothing"));
            assert_eq!(&m.body[..], b"to all");
        }
        for (client, _) in &clients {
            client.close().await;
        }
        server.shutdown().await;
    });
}
