//! Fan-out writing straight to idle plain-TCP sockets ([`Outbox::send`]), over real loopback
//! sockets: what is written, what is queued, and that the bytes on the wire are every frame
//! whole and in order either way.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use std::os::fd::AsRawFd;

use super::*;

/// A waker that counts its wakes: the connection's task, parked on its outbox.
#[derive(Default)]
struct Task(AtomicUsize);

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A server socket (the connection's) and its peer (the client).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, _) = l.accept().await.unwrap();
    server.writable().await.unwrap();
    (server, peer)
}

fn probe() -> Probe {
    Probe::new(crate::metrics::Metrics::new().unwrap())
}

/// Parks `task` on the outbox as the connection's writer does when nothing is queued; returns
/// what the take found instead when something is.
fn park(o: &Outbox, task: &Arc<Task>, batch: &mut VecDeque<Bytes>) -> Poll<Take> {
    let waker = Waker::from(task.clone());
    o.poll_take(&mut Context::from_waker(&waker), batch, &probe())
}

async fn read_exactly(peer: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    peer.read_exact(&mut got).await.unwrap();
    got
}

/// A connection whose writer is parked on its empty outbox, its socket lent to the fan-out:
/// the state in which a fan-out writes directly.
struct Idle {
    socket: TcpStream,
    peer: TcpStream,
    sub: Arc<Subscriber>,
    task: Arc<Task>,
    batch: VecDeque<Bytes>,
}

async fn idle(outbox_limit: usize) -> Idle {
    let (socket, peer) = pair().await;
    let sub = Hub::new(outbox_limit).connect(crate::protocol::Codec::Json);
    sub.outbox.write_directly_to(socket.as_raw_fd());
    let task = Arc::new(Task::default());
    let mut batch = VecDeque::new();
    assert!(park(&sub.outbox, &task, &mut batch).is_pending());
    Idle {
        socket,
        peer,
        sub,
        task,
        batch,
    }
}

#[tokio::test]
async fn a_frame_for_an_idle_plain_connection_is_written_to_its_socket_without_waking_it() {
    let Idle {
        socket,
        mut peer,
        sub,
        task,
        ..
    } = idle(1 << 20).await;

    assert_eq!(sub.send(Bytes::from_static(b"frame-1")), Sent::Written);
    assert_eq!(sub.send(Bytes::from_static(b"frame-2")), Sent::Written);
    assert_eq!(read_exactly(&mut peer, 14).await, b"frame-1frame-2");
    assert_eq!(task.0.load(Ordering::SeqCst), 0, "the task was not woken");
    assert_eq!(sub.outbox.pending_bytes(), 0);
    let c = sub.traffic.counts();
    assert_eq!((c.writes, c.bytes_out), (2, 14));
    drop(socket);
}

#[tokio::test]
async fn a_frame_for_a_writer_with_frames_in_hand_is_queued_behind_them() {
    let Idle {
        socket,
        mut peer,
        sub,
        task,
        mut batch,
    } = idle(1 << 20).await;
    // A reply queued the usual way wakes the task, which takes it: the writer is busy now.
    assert!(sub.push(Bytes::from_static(b"reply;")));
    assert_eq!(task.0.load(Ordering::SeqCst), 1);
    assert_eq!(
        park(&sub.outbox, &task, &mut batch),
        Poll::Ready(Take::Frames(None))
    );
    // While the batch is being written, a fan-out's frame waits its turn.
    assert_eq!(sub.send(Bytes::from_static(b"msg;")), Sent::Queued);
    assert_eq!(sub.outbox.queued(), vec![Bytes::from_static(b"msg;")]);
    let mut s = socket;
    for f in batch.drain(..) {
        s.write_all(&f).await.unwrap();
    }
    sub.outbox.written(6);
    assert_eq!(
        park(&sub.outbox, &task, &mut batch),
        Poll::Ready(Take::Frames(None))
    );
    for f in batch.drain(..) {
        s.write_all(&f).await.unwrap();
    }
    assert_eq!(read_exactly(&mut peer, 10).await, b"reply;msg;");
}

/// A peer that stops reading: direct writes fill the kernel's buffers, then a frame is taken in
/// part (its rest queued as a slice of the same bytes) or not at all (queued whole). Once the
/// peer reads and the writer drains the queue, the peer has every frame whole, in order.
#[tokio::test]
async fn what_the_socket_does_not_take_is_queued_and_every_frame_arrives_whole_in_order() {
    let Idle {
        socket,
        mut peer,
        sub,
        task,
        mut batch,
    } = idle(64 << 20).await;
    let mut sent = Vec::new();
    let mut frames = 0u32;
    // Bounded: loopback buffers hold a few MiB at most; 64 KiB frames fill them well before.
    // While the writer is idle (parked), each frame goes to the socket; the first that the
    // socket does not take whole is queued, and the next `park` takes it: the writer is busy.
    while park(&sub.outbox, &task, &mut batch).is_pending() {
        assert!(frames < 2_000, "the socket never refused a byte");
        let frame = Bytes::from(vec![(frames % 251) as u8; 64 << 10]);
        sent.extend_from_slice(&frame);
        frames += 1;
        sub.send(frame);
    }
    let rest: usize = batch.iter().map(|f| f.len()).sum();
    assert!(
        rest > 0 && rest <= 64 << 10,
        "the rest of one frame is queued"
    );
    // Frames sent now are queued behind that rest: the writer is busy.
    for _ in 0..3 {
        let frame = Bytes::from(vec![(frames % 251) as u8; 64 << 10]);
        sent.extend_from_slice(&frame);
        frames += 1;
        assert_eq!(sub.send(frame), Sent::Queued);
    }
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut s = socket;
    loop {
        let n: usize = batch.iter().map(|f| f.len()).sum();
        for f in batch.drain(..) {
            s.write_all(&f).await.unwrap();
        }
        sub.outbox.written(n);
        match poll_fn(|cx| Poll::Ready(sub.outbox.poll_take(cx, &mut batch, &probe()))).await {
            Poll::Ready(_) => continue,
            Poll::Pending => break,
        }
    }
    s.shutdown().await.unwrap();
    drop(s);
    let got = reader.await.unwrap();
    assert_eq!(got.len(), sent.len(), "every byte of every frame sent");
    assert!(got == sent, "in order, none torn");
}

#[tokio::test]
async fn once_the_close_frame_is_due_no_frame_goes_straight_to_the_socket() {
    let Idle { sub, task, .. } = idle(1 << 20).await;
    sub.outbox.stop_writing_directly();
    assert_eq!(sub.send(Bytes::from_static(b"late")), Sent::Queued);
    assert_eq!(task.0.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_quiet_topics_fan_out_on_two_workers_writes_half_and_queues_half() {
    let hub = Hub::new(1 << 20);
    let hub = Hub {
        direct: direct::DirectWrites::new(2),
        ..hub
    };
    let t = crate::protocol::Topic::parse("t").unwrap();
    let mut sockets = Vec::new();
    let mut subs = Vec::new();
    let task = Arc::new(Task::default());
    let n = 2 * direct::MIN_SHARE;
    for _ in 0..n {
        let (socket, peer) = pair().await;
        let sub = hub.connect(crate::protocol::Codec::Json);
        sub.outbox.write_directly_to(socket.as_raw_fd());
        assert_eq!(hub.subscribe(&t, &sub), Subscribed::Added);
        assert!(hub.go_live(&t, sub.id, None));
        let mut batch = VecDeque::new();
        assert!(park(&sub.outbox, &task, &mut batch).is_pending());
        sockets.push((socket, peer));
        subs.push(sub);
    }
    let m = |offset| crate::protocol::Message {
        topic: t.clone(),
        offset,
        epoch: Arc::from("e"),
        data: Bytes::from_static(b"1"),
    };
    hub.deliver(&m(1));
    let queued = |subs: &[Arc<Subscriber>]| -> Vec<usize> {
        subs.iter().map(|s| s.outbox.queued().len()).collect()
    };
    let half = n / 2;
    let first = queued(&subs);
    assert!(
        first[..half].iter().all(|&q| q == 1),
        "the first half queued"
    );
    assert!(
        first[half..].iter().all(|&q| q == 0),
        "the second half written"
    );
    assert_eq!(
        task.0.load(Ordering::SeqCst),
        half,
        "only the queued half was woken"
    );
    // Right after: not quiet, so every subscriber gets it queued (the written half's writers
    // are idle, but a batch will serve them better).
    hub.deliver(&m(2));
    let second = queued(&subs);
    assert!(first[..half].iter().all(|&q| q == 1) && second[..half].iter().all(|&q| q == 2));
    assert!(second[half..].iter().all(|&q| q == 1));
}
