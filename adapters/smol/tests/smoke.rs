//! A smoke test: echo of small and large messages, and a subscription.
use flowee_smol::{Client, Header, Message, NodeConfig, Priority, Request, Responder, Server};
use std::time::Duration;

fn echo(req: &Request<'_>, out: &mut Responder<'_>) {
    let _ = out.reply(Message::new(req.message.header, req.message.body));
}

#[test]
fn echo_small_and_large() {
    smol::block_on(async {
        let server = Server::bind("127.0.0.1:0", NodeConfig::default())
            .await
            .unwrap();
        server.handle(3, None, echo).unwrap();
        let client = Client::connect(server.local_addr(), NodeConfig::default())
            .await
            .unwrap();
        let reply = client
            .request(
                Message::new(Header::new(3, 2), b"hello"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&reply.body[..], b"hello");
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| i as u8).collect();
        let reply = client
            .request(
                Message::new(Header::new(3, 4), &big),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(reply.body == big);
        let mut sub = client.subscribe(3).unwrap();
        client
            .send(Message::new(Header::new(3, 7), b"sub"), Priority::Normal)
            .unwrap();
        let m = sub.next().await.unwrap();
        assert_eq!(&m.body[..], b"sub");
        client.close().await;
        server.shutdown().await;
    });
}
