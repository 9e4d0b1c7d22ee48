//! Fair turns at the admission queue: when requests queue for a model slot (and the quota slot
//! behind it), the next turn goes to the flow (API key) with the smallest virtual finish tag,
//! so each key gets its weighted share however many requests another key piles up
//! (self-clocked fair queuing; one flow degenerates to FIFO, which is today's order).
//!
//! Only one request holds the turn at a time: it waits for a concurrency slot and reserves its
//! quota slot, then passes the turn on. Uncontended, taking the turn is one uncontended lock.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Virtual time one request of weight 1 costs; a weight-w flow advances by this / w.
const UNIT: u64 = 1_000_000;

/// Who a request is queued for: a key id (or `anonymous` when auth is off) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The key id.
    pub id: Arc<str>,
    /// Its share relative to other keys (default 1).
    pub weight: u32,
}

tokio::task_local! {
    /// The flow of the request being served (set by the auth middleware).
    pub static FLOW: Flow;
}

impl Flow {
    /// The one flow every request belongs to when auth is off.
    pub fn anonymous() -> Flow {
        Flow {
            id: Arc::from("anonymous"),
            weight: 1,
        }
    }

    /// The flow of the current task, or [`Flow::anonymous`].
    pub fn current() -> Flow {
        FLOW.try_with(Clone::clone)
            .unwrap_or_else(|_| Flow::anonymous())
    }
}

#[derive(Default)]
struct GateState {
    busy: bool,
    /// The tag of the last request given the turn.
    virtual_time: u64,
    /// Last finish tag per flow with requests queued or recently served.
    finish: HashMap<Arc<str>, u64>,
    /// Waiters by (finish tag, arrival); entries of waiters that gave up are skipped on pop.
    queue: BTreeMap<(u64, u64), oneshot::Sender<Turn>>,
    arrivals: u64,
}

/// The turnstile in front of the admission queue.
#[derive(Default, Clone)]
pub struct FairGate {
    state: Arc<Mutex<GateState>>,
}

impl std::fmt::Debug for FairGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairGate").finish_non_exhaustive()
    }
}

/// The right to take the next slot; passed on to the fairest waiter when dropped.
#[derive(Debug)]
pub struct Turn {
    gate: FairGate,
    armed: bool,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.armed {
            self.gate.pass();
        }
    }
}

impl FairGate {
    /// The turn at once, when nobody holds or waits for it.
    pub fn try_turn(&self) -> Option<Turn> {
        let mut state = self.state.lock();
        if state.busy || !state.queue.is_empty() {
            return None;
        }
        state.busy = true;
        Some(self.turn_token())
    }

    /// Waits for the turn in `flow`'s fair order until `until`; `None` when the time ran out.
    pub async fn turn(&self, flow: &Flow, until: Instant) -> Option<Turn> {
        let receiver = {
            let mut state = self.state.lock();
            if !state.busy && state.queue.is_empty() {
                state.busy = true;
                return Some(self.turn_token());
            }
            let start = state
                .finish
                .get(&flow.id)
                .copied()
                .unwrap_or(0)
                .max(state.virtual_time);
            let tag = start + UNIT / u64::from(flow.weight.max(1));
            state.finish.insert(flow.id.clone(), tag);
            state.arrivals += 1;
            let arrival = state.arrivals;
            let (sender, receiver) = oneshot::channel();
            state.queue.insert((tag, arrival), sender);
            receiver
        };
        tokio::time::timeout_at(until, receiver).await.ok()?.ok()
    }

    fn turn_token(&self) -> Turn {
        Turn {
            gate: self.clone(),
            armed: true,
        }
    }

    /// Hands the turn to the waiter with the smallest tag still waiting, or frees it.
    fn pass(&self) {
        let mut state = self.state.lock();
        while let Some(((tag, _), sender)) = state.queue.pop_first() {
            state.virtual_time = tag;
            match sender.send(self.turn_token()) {
                Ok(()) => return,
                // That waiter gave up; disarm the returned token (we hold the lock) and go on.
                Err(mut unused) => unused.armed = false,
            }
        }
        state.busy = false;
        // Nobody waits: every flow is idle, so their history no longer matters.
        state.finish.clear();
        state.virtual_time = 0;
    }

    /// Requests waiting for the turn (including ones that gave up but are not yet skipped).
    pub fn waiting(&self) -> usize {
        self.state.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn flow(id: &str, weight: u32) -> Flow {
        Flow {
            id: Arc::from(id),
            weight,
        }
    }

    /// Queues `a` requests of flow A, then `b` of flow B, behind a held turn; returns the order
    /// the turns were granted in.
    async fn order(a: usize, b: usize, weight_b: u32) -> String {
        let gate = FairGate::default();
        let held = gate.try_turn().unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (name, n, weight) in [("A", a, 1), ("B", b, weight_b)] {
            for _ in 0..n {
                let gate = gate.clone();
                let tx = tx.clone();
                let f = flow(name, weight);
                tasks.push(tokio::spawn(async move {
                    let turn = gate.turn(&f, until).await.unwrap();
                    tx.send(name).unwrap();
                    drop(turn);
                }));
                // Arrival order is the spawn order.
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        drop(tx);
        let mut out = String::new();
        while let Some(name) = rx.recv().await {
            out.push_str(name);
        }
        out
    }

    #[tokio::test]
    async fn a_flow_that_queued_later_is_interleaved_not_put_behind() {
        assert_eq!(order(6, 3, 1).await, "ABABABAAA");
    }

    #[tokio::test]
    async fn weights_give_proportional_turns() {
        assert_eq!(order(6, 6, 2).await, "BABBABBABAAA");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gave_up_does_not_keep_the_turn() {
        let gate = FairGate::default();
        let held = gate.try_turn().unwrap();
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(gate.turn(&flow("A", 1), soon).await.is_none());
        drop(held);
        assert!(gate.try_turn().is_some());
    }
}
