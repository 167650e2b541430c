//! Answers before new forwards, on the one-worker runtime.
//!
//! A burst of requests wakes every client connection's task at once, and tokio runs woken tasks
//! in order: without this, the worker forwards every request of the burst before it reads the
//! first answer, although the replica answered the first ones long before (each forward is a
//! TLS record decrypted, a head parsed and a write to the replica; sixteen of them are a few
//! hundred microseconds). haproxy, by its loop, answers the requests it forwarded first before it
//! forwards the rest; a request's latency is then its own forward, the replica's time and its
//! answer, not every other request's forward.
//!
//! The rule: while requests this worker sent are still awaiting their answers, at most
//! [`PER_POLL`] new requests are forwarded per look at the I/O driver. The requests over it wait
//! in line (first come, first forwarded), parked: only the first in line is ever polled. It yields
//! ([`tokio::task::yield_now`], which on tokio's schedulers resumes only after the driver was
//! polled); the answers that arrived meanwhile were woken by that poll and run first; then it
//! goes, and wakes the next in line, which goes in the same round if the round has room, or
//! yields in turn. The cost is an `epoll_wait` that does not wait per [`PER_POLL`] forwards held
//! back, and a few task polls; a line of any length costs the same per round (a first version
//! where every held-back request yielded on its own re-polled the whole line every round: HTTP/2
//! at 160 streams fell to 0.39x). With nothing awaiting an answer, a request goes at once unless
//! others are in line before it; with [`DEEP`] requests awaiting or in line, at once too.
//!
//! Measured (`benches/peers/mix.sh 10 5 "haproxy scoregate" HEAD`, the same aligned bursts of 16
//! interleaved with the build before): p50 total 0.977x (0.92-1.02) and 0.995x in a second run,
//! lower in 6 of 10 repetitions each; p99 1.09x and 0.69x. A small gain, not the whole gap it was
//! meant to close; keep-alive and HTTP/2 throughput unchanged (`ab.sh`: 1.02x, 1.03x).
//!
//! Only on the current-thread scheduler (`TOKIO_WORKER_THREADS=1`, a process or pod per core):
//! the counts are the worker thread's, and the multi-thread scheduler moves tasks between workers.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Poll, Waker};

use tokio::runtime::{Handle, RuntimeFlavor};

/// New forwards per look at the I/O driver while answers are awaited.
pub const PER_POLL: u32 = 1;
/// With this many requests awaiting answers or in line the rule is off: the worker is saturated,
/// every look at the driver finds answers anyway, and tokio looks only every 61 task polls while
/// tasks are ready (`event_interval`), so one forward per look would cap the throughput (HTTP/2
/// at 160 streams: 0.39x with no bound, 0.66x counting only the requests awaiting answers).
pub const DEEP: u32 = 32;
/// The first in line goes after yielding this many times, whatever the round (a bound; it goes
/// after one yield unless the runtime polled it without a driver poll).
const MAX_YIELDS: u32 = 4;

#[derive(Default)]
struct Gate {
    /// Whether this thread runs a current-thread runtime (`None`: not known yet).
    one_worker: Option<bool>,
    /// Bumped by the first in line when it resumes after a driver poll.
    round: u64,
    /// Forwards since `round` was last bumped.
    forwards: u32,
    /// Requests sent from this thread that await their answer's head.
    awaiting: u32,
    /// Requests held back, in order: a ticket and the waker of the task waiting for its turn.
    line: VecDeque<(u64, Option<Waker>)>,
    next_ticket: u64,
}

impl Gate {
    /// Whether a forward may go now (the first in line, or a request with nobody in line).
    fn room(&self) -> bool {
        self.awaiting == 0
            || self.awaiting.saturating_add(self.line.len() as u32) >= DEEP
            || self.forwards < PER_POLL
    }

    fn go(&mut self) -> Awaiting {
        self.forwards = self.forwards.saturating_add(1);
        self.awaiting = self.awaiting.saturating_add(1);
        Awaiting { counted: true }
    }

    /// Leave the line (`ticket`, wherever it stands); the waker of the new first in line if the
    /// first left.
    fn leave(&mut self, ticket: u64) -> Option<Waker> {
        let at = self.line.iter().position(|(t, _)| *t == ticket)?;
        self.line.remove(at);
        if at == 0 {
            self.line.front_mut().and_then(|(_, w)| w.take())
        } else {
            None
        }
    }
}

thread_local! {
    static GATE: RefCell<Gate> = RefCell::new(Gate::default());
}

fn with<R>(f: impl FnOnce(&mut Gate) -> R) -> R {
    GATE.with(|g| f(&mut g.borrow_mut()))
}

/// A request sent and awaiting its answer's head; dropped when the head arrived (or the exchange
/// ended without one).
#[must_use]
pub struct Awaiting {
    counted: bool,
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        if self.counted {
            with(|g| g.awaiting = g.awaiting.saturating_sub(1));
        }
    }
}

/// A place in line; leaving it (gone, or the request cancelled) hands the turn on.
struct InLine(u64);

impl Drop for InLine {
    fn drop(&mut self) {
        if let Some(next) = with(|g| g.leave(self.0)) {
            next.wake();
        }
    }
}

/// Wait for this request's turn to be forwarded (see the module), and count it as awaiting its
/// answer until the returned guard is dropped.
pub async fn forward() -> Awaiting {
    let ticket = match with(|g| {
        let one = *g.one_worker.get_or_insert_with(|| {
            Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
        });
        if !one {
            return Err(Awaiting { counted: false });
        }
        if g.line.is_empty() && g.room() {
            return Err(g.go());
        }
        let t = g.next_ticket;
        g.next_ticket = t.wrapping_add(1);
        g.line.push_back((t, None));
        Ok(t)
    }) {
        Ok(t) => InLine(t),
        Err(now) => return now,
    };
    let mut yields = 0;
    loop {
        // Parked until first in line.
        poll_fn(|cx| {
            with(|g| match g.line.iter_mut().position(|(t, _)| *t == ticket.0) {
                Some(0) | None => Poll::Ready(()),
                Some(at) => {
                    g.line[at].1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        let held = with(|g| (!g.room() && yields < MAX_YIELDS).then_some(g.round));
        let Some(round) = held else {
            // Its turn: out of line (waking the next, who goes in this round if it has room or
            // yields for the next), counted.
            let sent = with(|g| g.go());
            drop(ticket);
            return sent;
        };
        tokio::task::yield_now().await;
        yields += 1;
        with(|g| {
            if g.round == round {
                g.round = round.wrapping_add(1);
                g.forwards = 0;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Two requests are forwarded while an earlier one's answer is already readable: the answer
    /// is taken before either forward (without the rule: both forwards first, as woken).
    #[test]
    fn a_ready_answer_runs_before_new_forwards() {
        current_thread().block_on(async {
            let order = Arc::new(Mutex::new(Vec::new()));
            let log = |o: &Arc<Mutex<Vec<&'static str>>>, what| {
                o.lock().expect("order").push(what);
            };
            // The first request: sent, awaiting its answer on a real socket.
            let first = forward().await;
            let (mut replica, mut client) = tcp_pair().await;
            let o = order.clone();
            let answer = tokio::spawn(async move {
                let mut b = [0u8; 2];
                client.read_exact(&mut b).await.expect("answer");
                drop(first);
                log(&o, "answer");
            });
            tokio::task::yield_now().await; // the answer's task now waits on its socket
            // Two new requests woken together, then the replica answers the first.
            let mut forwards = Vec::new();
            for name in ["second forwarded", "third forwarded"] {
                let o = order.clone();
                forwards.push(tokio::spawn(async move {
                    let sent = forward().await;
                    log(&o, name);
                    drop(sent);
                }));
            }
            replica.write_all(b"ok").await.expect("write");
            answer.await.expect("answer task");
            for f in forwards {
                f.await.expect("forward task");
            }
            let mut order = order.lock().expect("order").clone();
            assert_eq!(order.first(), Some(&"answer"), "{order:?}");
            order.sort_unstable();
            assert_eq!(order, ["answer", "second forwarded", "third forwarded"]);
        });
    }

    /// With nothing awaiting an answer, requests go at once, in order, and none is held back.
    #[test]
    fn nothing_awaited_nothing_held() {
        current_thread().block_on(async {
            for _ in 0..3 {
                drop(forward().await);
            }
            with(|g| {
                assert_eq!(g.awaiting, 0);
                assert_eq!(g.round, 0, "no request yielded");
                assert!(g.line.is_empty());
            });
        });
    }

    /// A line of 20 requests held back while one awaits its answer: all are forwarded, first
    /// come first, one per driver poll (a round each), and the line is empty after.
    #[test]
    fn a_line_goes_in_order_one_per_poll() {
        current_thread().block_on(async {
            let first = forward().await;
            let order = Arc::new(Mutex::new(Vec::new()));
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let o = order.clone();
                    tokio::spawn(async move {
                        let sent = forward().await;
                        o.lock().expect("order").push(i);
                        sent // still awaiting its answer: the next has to wait its turn
                    })
                })
                .collect();
            let mut sent = Vec::new();
            for t in tasks {
                sent.push(t.await.expect("task"));
            }
            assert_eq!(*order.lock().expect("order"), (0..20).collect::<Vec<_>>());
            with(|g| {
                assert_eq!(g.round, 20, "one forward per driver poll");
                assert_eq!(g.awaiting, 21);
                assert!(g.line.is_empty());
            });
            drop((first, sent));
            with(|g| assert_eq!(g.awaiting, 0));
        });
    }

    /// Saturated (`DEEP` answers awaited): requests go at once, without a look at the driver.
    #[test]
    fn saturated_goes_at_once() {
        current_thread().block_on(async {
            let mut sent = Vec::new();
            for _ in 0..DEEP {
                sent.push(tokio::spawn(forward()).await.expect("task"));
            }
            let round = with(|g| g.round);
            assert!(round > 0, "held back while under DEEP");
            for _ in 0..10 {
                sent.push(forward().await);
            }
            with(|g| {
                assert_eq!(g.round, round, "not held back once saturated");
                assert_eq!(g.awaiting, DEEP + 10);
            });
        });
    }

    /// A request cancelled while first in line hands the turn on: the one behind it still goes.
    #[test]
    fn a_cancelled_request_hands_its_turn_on() {
        current_thread().block_on(async {
            let first = forward().await;
            let mut cancelled = Box::pin(forward());
            // Polled once: in line (the round has had its forward), yielding.
            assert!(futures_poll_once(cancelled.as_mut()).await.is_none());
            let behind = tokio::spawn(async { forward().await });
            tokio::task::yield_now().await; // `behind` is in line, parked behind `cancelled`
            drop(cancelled);
            let sent = tokio::time::timeout(std::time::Duration::from_secs(5), behind)
                .await
                .expect("the request behind went")
                .expect("task");
            with(|g| assert!(g.line.is_empty()));
            drop((first, sent));
        });
    }

    /// On the multi-thread scheduler the rule is off: nothing is counted.
    #[test]
    fn multi_thread_is_not_gated() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::spawn(async {
                let a = forward().await;
                let b = forward().await;
                assert!(!a.counted && !b.counted);
                with(|g| assert_eq!(g.awaiting, 0));
            })
            .await
            .expect("task");
        });
    }

    /// Poll a future once: its output if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        poll_fn(|cx| Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }))
        .await
    }

    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (s.expect("accept").0, c.expect("connect"))
    }
}
