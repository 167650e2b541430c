//! Load-gated busy polling for the one-worker runtime (`runtime.busy_poll_us`, off by default).
//!
//! An idle worker parks in `epoll_wait` and its CPU halts; the next packet then pays the wake-up
//! of that CPU — on a virtual machine, the host's wake-up of the vCPU — once for the client's
//! request and once more for the scoring pod's answer. With a budget set, the worker keeps
//! polling (`epoll_wait` with a zero timeout) for up to that long after it last did work, so an
//! answer or a request that comes within the budget finds it awake; with no traffic for longer
//! than the budget it parks as usual and costs nothing. It is haproxy's `busy-polling` bounded by
//! traffic: CPU for latency, for nodes where a core is reserved for the gateway.
//!
//! Mechanism: the runtime's park hook. Every poll of a client connection's future counts as work
//! ([`Working`], a counter of the worker thread). Before the worker parks, if it has worked within
//! the budget, the hook wakes a task of ours ([`BusyPoll::nudger`]); a current-thread worker with
//! a task to run does not block: it polls the I/O driver without waiting, runs what became ready
//! and comes back to the hook. Timers and the nudger itself are not work, so an idle gateway
//! never polls.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::metrics::MetricsError;
use prometheus::IntCounter;
use tokio::sync::Notify;
use tokio::time::Instant;

thread_local! {
    /// Polls of connection futures on this thread (wrapping).
    static WORK: Cell<u64> = const { Cell::new(0) };
}

/// Count one unit of work on this worker thread.
pub fn note_work() {
    WORK.set(WORK.get().wrapping_add(1));
}

pin_project_lite::pin_project! {
    /// A future whose every poll counts as work for busy polling: a client connection's.
    pub struct Working<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Working<F> {
    pub fn new(inner: F) -> Self {
        Working { inner }
    }
}

impl<F: Future> Future for Working<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        note_work();
        self.project().inner.poll(cx)
    }
}

/// The budget, the nudger's signal and the state the park hook keeps (touched by the one worker
/// thread only; atomics because the hook must be `Sync`). Times are nanoseconds since `epoch`,
/// 0 for none.
pub struct BusyPoll {
    budget: Duration,
    epoch: Instant,
    notify: Notify,
    /// The work counter when the hook last looked.
    seen: AtomicU64,
    /// Keep polling until then.
    until: AtomicU64,
    /// Zero-timeout rounds so far (`scoregate_busy_poll_rounds_total` once registered), and
    /// when the last one began.
    rounds: IntCounter,
    last_round: AtomicU64,
}

impl BusyPoll {
    pub fn new(budget: Duration) -> Result<Arc<Self>, MetricsError> {
        let rounds = IntCounter::new(
            "scoregate_busy_poll_rounds_total",
            "Times the worker polled for events without blocking, within runtime.busy_poll_us \
             of its last work.",
        )?;
        Ok(Arc::new(Self {
            budget,
            epoch: Instant::now(),
            notify: Notify::new(),
            seen: AtomicU64::new(0),
            until: AtomicU64::new(0),
            rounds,
            last_round: AtomicU64::new(0),
        }))
    }

    /// The rounds counter, to register with the gateway's metrics.
    pub fn rounds_counter(&self) -> IntCounter {
        self.rounds.clone()
    }

    /// Install the park hook. Only on `Builder::new_current_thread()`: its hook runs on the
    /// worker with the scheduler at hand, so the nudger's wake keeps the worker from blocking.
    pub fn install(self: &Arc<Self>, b: &mut tokio::runtime::Builder) {
        let me = self.clone();
        b.on_thread_park(move || me.before_park());
    }

    /// The task the park hook wakes; spawn it on the runtime. It only waits to be woken again.
    pub fn nudger(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let me = self.clone();
        async move {
            loop {
                me.notify.notified().await;
            }
        }
    }

    /// Zero-timeout rounds so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.get()
    }

    /// When the last zero-timeout round began, if any.
    pub fn last_round(&self) -> Option<Instant> {
        match self.last_round.load(Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n)),
        }
    }

    fn before_park(&self) {
        // At least 1: 0 means "none". u64 nanoseconds last 584 years.
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).map_or(u64::MAX, |n| n.max(1));
        let work = WORK.get();
        if work != self.seen.load(Relaxed) {
            self.seen.store(work, Relaxed);
            let budget = u64::try_from(self.budget.as_nanos()).unwrap_or(u64::MAX);
            self.until.store(now.saturating_add(budget), Relaxed);
        }
        if now < self.until.load(Relaxed) {
            self.rounds.inc();
            self.last_round.store(now, Relaxed);
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(bp: &Arc<BusyPoll>) -> tokio::runtime::Runtime {
        let mut b = tokio::runtime::Builder::new_current_thread();
        bp.install(&mut b);
        let rt = b.enable_all().build().expect("runtime");
        rt.spawn(bp.nudger());
        rt
    }

    /// Real time (a paused clock stands still while the worker polls, so the budget would never
    /// run out): the bounds below hold however the thread is scheduled, except the one marked.
    #[test]
    fn after_work_the_worker_polls_for_the_budget_then_parks() {
        let budget = Duration::from_millis(200);
        let bp = BusyPoll::new(budget).expect("busy poll");
        runtime(&bp).block_on(async {
            note_work();
            let r0 = bp.rounds();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let r1 = bp.rounds();
            assert!(
                r1 > r0,
                "no zero-timeout round within the budget: {r0} -> {r1}"
            );
            // Longer than the budget with nothing to do: rounds stop when it runs out.
            note_work();
            let start = Instant::now();
            tokio::time::sleep(budget * 2).await;
            let last = bp.last_round().expect("rounds happened");
            // (The budget runs from the park after `start`: a few microseconds of slack, or
            // more if the thread was descheduled in between.)
            assert!(
                last < start + budget + budget / 4,
                "polled {:?} after its last work, past the {budget:?} budget",
                last - start
            );
            // Scheduling-dependent, with 150 ms of slack: it did poll through most of it.
            assert!(
                last >= start + budget / 4,
                "stopped after {:?}",
                last - start
            );
        });
    }

    /// Timers and the nudger are not work: a gateway with no traffic blocks at once.
    #[test]
    fn with_no_work_the_worker_never_polls() {
        let bp = BusyPoll::new(Duration::from_millis(200)).expect("busy poll");
        runtime(&bp).block_on(async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert_eq!(bp.rounds(), 0);
    }

    /// Every poll of a wrapped future is work, and its output comes through.
    #[test]
    fn a_working_future_counts_its_polls() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let before = WORK.get();
        let out = rt.block_on(Working::new(async {
            tokio::task::yield_now().await;
            7
        }));
        assert_eq!(out, 7);
        assert_eq!(WORK.get().wrapping_sub(before), 2);
    }
}
