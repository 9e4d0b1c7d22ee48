//! Fair turns at the admission queue, and each flow's share of the queue's places.
//!
//! Turns: when requests queue for a model slot (and the quota slot behind it), the next turn
//! goes to the flow (API key) with the smallest virtual finish tag, so each key gets its
//! weighted share however many requests another key piles up (self-clocked fair queuing; one
//! flow degenerates to FIFO). Only one request holds the turn at a time: it waits for a
//! concurrency slot and reserves its quota slot, then passes the turn on. Uncontended, taking
//! the turn is one uncontended lock.
//!
//! Places: the queue holds at most `max_queue` requests, but one flow may use all of them only
//! while nobody else needs one. When the queue is full, a newcomer whose flow holds fewer
//! places (per unit of weight) than the flow holding the most displaces that flow's newest
//! waiting request, which is refused at once (503, as if the queue had been full when it
//! came). So a flood from one key is refused before another key's question is, and the queue
//! still serves a lone key in full. Every map here holds only flows with requests queued now,
//! so its size is bounded by the queue's.
//!
//! Pace: how long each turn is held while others wait for it (the wait for a model slot and the
//! quota slot behind it) is the time one admission takes while requests queue, so a recent mean of it over a request's
//! place in the fair order estimates its wait ([`FairGate::estimated_wait`]): a request that
//! cannot be admitted before its deadline is refused at once instead of waiting it out.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Virtual time one request of weight 1 costs; a weight-w flow advances by this / w.
const UNIT: u64 = 1_000_000;
/// Each turn's hold moves the mean hold by this fraction of the difference: the last dozen or
/// so turns rule, so the estimate follows a change of pace within seconds.
const HOLD_SMOOTHING: f64 = 1.0 / 8.0;
/// Turns seen before the mean hold is trusted for refusing.
const HOLD_SAMPLES_NEEDED: u64 = 8;

/// Who a request is queued for: a key id (or `anonymous` when auth is off) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// The key id.
    pub id: Arc<str>,
    /// Its share relative to other keys (default 1).
    pub weight: u32,
}

impl Flow {
    /// The one flow every request belongs to when auth is off (shared: no allocation per
    /// request).
    pub fn anonymous() -> Flow {
        static ANONYMOUS: LazyLock<Flow> = LazyLock::new(|| Flow {
            id: Arc::from("anonymous"),
            weight: 1,
        });
        ANONYMOUS.clone()
    }
}

/// A request waiting for the turn.
struct Waiter {
    flow: Arc<str>,
    /// Its queue place, released when it is displaced.
    place: u64,
    sender: oneshot::Sender<Turn>,
}

/// A flow's places in the queue.
#[derive(Debug, Clone, Copy)]
struct Share {
    places: usize,
    weight: u32,
}

struct GateState {
    busy: bool,
    /// The queue place of the turn's holder, when it got the turn through one (`None` for a
    /// turn taken at once, with no place).
    holder_place: Option<u64>,
    /// The tag of the last request given the turn.
    virtual_time: u64,
    /// Last finish tag per flow with requests queued.
    finish: HashMap<Arc<str>, u64>,
    /// Waiters by (finish tag, arrival); entries of waiters that gave up are skipped on pop.
    queue: BTreeMap<(u64, u64), Waiter>,
    arrivals: u64,
    /// Most places taken at once.
    max_queue: usize,
    /// Places taken now (waiting for the turn, or holding it and waiting for a slot).
    taken: usize,
    /// Places per flow with any.
    shares: HashMap<Arc<str>, Share>,
    /// The flow of each place taken, by place id.
    places: HashMap<u64, Arc<str>>,
    next_place: u64,
    /// When the turn now held was given.
    granted_at: Option<Instant>,
    /// The recent mean time a turn is held (seconds): the time one admission takes.
    mean_hold: f64,
    /// Turns whose hold was measured.
    holds: u64,
    /// Turns passed on since the gate was made: each one a request that reserved its quota
    /// slot, was refused, or gave up while holding the turn.
    turns_passed: u64,
}

impl GateState {
    fn new(max_queue: usize) -> GateState {
        GateState {
            busy: false,
            holder_place: None,
            virtual_time: 0,
            finish: HashMap::new(),
            queue: BTreeMap::new(),
            arrivals: 0,
            max_queue,
            taken: 0,
            shares: HashMap::new(),
            places: HashMap::new(),
            next_place: 0,
            granted_at: None,
            mean_hold: 0.0,
            holds: 0,
            turns_passed: 0,
        }
    }

    /// Notes that the turn was given now.
    fn grant(&mut self) {
        self.granted_at = Some(Instant::now());
    }

    /// Notes that the turn given at `granted_at` was passed on now.
    fn measure_hold(&mut self) {
        let Some(at) = self.granted_at.take() else {
            return;
        };
        let held = at.elapsed().as_secs_f64();
        self.mean_hold = if self.holds == 0 {
            held
        } else {
            self.mean_hold + (held - self.mean_hold) * HOLD_SMOOTHING
        };
        self.holds += 1;
    }

    /// Requests served before a new request of `flow` in the fair order (itself excluded),
    /// counting the one holding the turn: the flow's own queued requests, and of each other
    /// flow as many as it is owed by weight while `flow`'s requests wait.
    fn ahead(&self, flow: &Flow) -> usize {
        let mine = self.shares.get(&flow.id).map_or(0, |s| s.places);
        self.ahead_holding(flow, mine)
    }

    /// [`GateState::ahead`] for a request of `flow` when `flow` holds `mine` places, its own
    /// included.
    fn ahead_holding(&self, flow: &Flow, mine: usize) -> usize {
        let weight = f64::from(flow.weight.max(1));
        let others: usize = self
            .shares
            .iter()
            .filter(|(id, _)| **id != flow.id)
            .map(|(_, share)| {
                let owed = (mine as f64 * f64::from(share.weight.max(1)) / weight).ceil();
                share.places.min(owed as usize)
            })
            .sum();
        // `mine` counts the new request's own place once it holds one.
        mine.saturating_sub(1) + others
    }

    /// 1 while a request holds the turn without a queue place (it gave its place back, or
    /// never took one), else 0. The holder reserves its quota slot before passing the turn on, so a
    /// newcomer counting who reserves before it counts the holder too: with Redis deciding,
    /// that reservation is a round trip, and a burst arriving meanwhile would otherwise each
    /// count one slot too few.
    fn holder(&self) -> usize {
        // While it still holds its place it is counted among the places already.
        let placed = self
            .holder_place
            .is_some_and(|id| self.places.contains_key(&id));
        usize::from(self.busy && !placed)
    }

    /// Gives place `id` back; false when it was already given back (displaced).
    fn release(&mut self, id: u64) -> bool {
        let Some(flow) = self.places.remove(&id) else {
            return false;
        };
        self.taken -= 1;
        if let Some(share) = self.shares.get_mut(&flow) {
            share.places -= 1;
            if share.places == 0 {
                // Its last request left the queue: its tag no longer matters (a returning flow
                // starts at the virtual time, as a new one does).
                self.shares.remove(&flow);
                self.finish.remove(&flow);
            }
        }
        true
    }

    /// The newest waiting request of the flow holding the most places per unit of weight,
    /// when `flow` (holding fewer even with one more) may take its place.
    fn victim(&self, flow: &Flow) -> Option<(u64, u64)> {
        let mine = self.shares.get(&flow.id).map_or(0, |s| s.places);
        let weight = u64::from(flow.weight.max(1));
        let (most, share) = self
            .shares
            .iter()
            .filter(|(id, _)| **id != flow.id)
            .max_by(|(_, a), (_, b)| {
                // a.places / a.weight against b.places / b.weight, without division.
                (a.places as u128 * u128::from(b.weight.max(1)))
                    .cmp(&(b.places as u128 * u128::from(a.weight.max(1))))
            })?;
        // Displace only when it evens the shares out: (mine + 1) / weight < places / its weight.
        let evens = (mine as u128 + 1) * u128::from(share.weight.max(1))
            < share.places as u128 * u128::from(weight);
        if !evens {
            return None;
        }
        // A flow's tags grow with its arrivals: its newest waiter is its last in tag order.
        self.queue
            .iter()
            .rev()
            .find(|(_, waiter)| waiter.flow == *most && self.places.contains_key(&waiter.place))
            .map(|(key, _)| *key)
    }
}

/// The turnstile in front of the admission queue, and the queue's places.
#[derive(Clone)]
pub struct FairGate {
    state: Arc<Mutex<GateState>>,
}

impl Default for FairGate {
    /// A gate with an unbounded queue.
    fn default() -> Self {
        FairGate::new(usize::MAX)
    }
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

/// How many requests will reserve a quota slot before one question, and when that was counted
/// (in turns passed). Shared between the question's admission, which counts again once it
/// takes its queue place, and its quota check beside it, in the same task.
#[derive(Debug, Default)]
pub struct Ahead {
    counted: AtomicUsize,
    turns_then: AtomicU64,
}

impl Ahead {
    /// A count of `counted` made before the gate passed any turn.
    #[cfg(test)]
    pub(crate) fn before_any_turn(counted: usize) -> Ahead {
        let ahead = Ahead::default();
        ahead.set(counted, 0);
        ahead
    }

    fn set(&self, counted: usize, turns_then: u64) {
        self.turns_then.store(turns_then, Ordering::Release);
        self.counted.store(counted, Ordering::Release);
    }

    fn get(&self) -> (usize, u64) {
        (
            self.counted.load(Ordering::Acquire),
            self.turns_then.load(Ordering::Acquire),
        )
    }
}

/// A place in the queue, given back when dropped.
#[derive(Debug)]
pub struct Place {
    gate: FairGate,
    id: u64,
    /// Requests served before this one in the fair order when it took the place (the turn's
    /// holder included), counted under the same lock as the place was taken: two requests
    /// arriving together see different counts here, where [`FairGate::ahead_of_newcomer`]
    /// gives both the same.
    pub ahead: usize,
    /// [`GateState::turns_passed`] when `ahead` was counted.
    turns_then: u64,
}

impl Place {
    /// Notes in `ahead` the count this place was given.
    pub fn count_into(&self, ahead: &Ahead) {
        ahead.set(self.ahead, self.turns_then);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock();
        if state.release(self.id) {
            crate::admission::metrics::queue_depth(state.taken);
        }
    }
}

/// How a wait for the turn ended.
#[derive(Debug)]
pub enum Waited {
    /// The turn.
    Turn(Turn),
    /// Another flow with fewer places took this request's place.
    Displaced,
    /// The time ran out.
    TimedOut,
}

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl FairGate {
    /// A gate whose queue holds at most `max_queue` requests.
    pub fn new(max_queue: usize) -> FairGate {
        FairGate {
            state: Arc::new(Mutex::new(GateState::new(max_queue))),
        }
    }

    /// The turn at once, when nobody holds or waits for it.
    pub fn try_turn(&self) -> Option<Turn> {
        let mut state = self.state.lock();
        if state.busy || !state.queue.is_empty() {
            return None;
        }
        state.busy = true;
        state.holder_place = None;
        state.grant();
        Some(self.turn_token())
    }

    /// A place in the queue for `flow`: a free one, or the newest waiting request's of the
    /// flow holding the most places when `flow` holds fewer (that request is refused).
    pub fn enqueue(&self, flow: &Flow) -> Result<Place, QueueFull> {
        let mut state = self.state.lock();
        if state.taken >= state.max_queue {
            let victim = state.victim(flow).ok_or(QueueFull)?;
            if let Some(waiter) = state.queue.remove(&victim) {
                state.release(waiter.place);
                crate::admission::metrics::queue_displaced();
                // Dropping its sender wakes it: displaced.
                drop(waiter);
            }
        }
        let id = state.next_place;
        state.next_place += 1;
        state.taken += 1;
        state.places.insert(id, flow.id.clone());
        state
            .shares
            .entry(flow.id.clone())
            .and_modify(|s| {
                s.places += 1;
                s.weight = flow.weight;
            })
            .or_insert(Share {
                places: 1,
                weight: flow.weight,
            });
        crate::admission::metrics::queue_depth(state.taken);
        let ahead = state.ahead(flow) + state.holder();
        Ok(Place {
            gate: self.clone(),
            id,
            ahead,
            turns_then: state.turns_passed,
        })
    }

    /// Notes that the turn's holder (which took the turn at once) has taken `place` too, to
    /// wait there for a model slot: it is counted once, as a place, until it gives that back.
    pub fn holder_took(&self, place: &Place) {
        let mut state = self.state.lock();
        if state.busy {
            state.holder_place = Some(place.id);
        }
    }

    /// Waits, in the queue place `place`, for the turn in `flow`'s fair order until `until`.
    pub async fn turn(&self, place: &Place, flow: &Flow, until: Instant) -> Waited {
        let waiting = {
            let mut state = self.state.lock();
            if !state.places.contains_key(&place.id) {
                return Waited::Displaced;
            }
            if !state.busy && state.queue.is_empty() {
                state.busy = true;
                state.holder_place = Some(place.id);
                state.grant();
                return Waited::Turn(self.turn_token());
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
            state.queue.insert(
                (tag, arrival),
                Waiter {
                    flow: flow.id.clone(),
                    place: place.id,
                    sender,
                },
            );
            (receiver, (tag, arrival))
        };
        let (receiver, entry) = waiting;
        match tokio::time::timeout_at(until, receiver).await {
            Ok(Ok(turn)) => Waited::Turn(turn),
            Ok(Err(_)) => Waited::Displaced,
            Err(_) => {
                // Gone from the queue at once, so no newcomer displaces a request that left.
                self.state.lock().queue.remove(&entry);
                Waited::TimedOut
            }
        }
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
        state.turns_passed += 1;
        // Only a turn that others waited for tells the queue's pace: an uncontended one says
        // how fast a lone request goes.
        if state.queue.is_empty() {
            state.granted_at = None;
        } else {
            state.measure_hold();
        }
        while let Some(((tag, _), waiter)) = state.queue.pop_first() {
            state.virtual_time = tag;
            match waiter.sender.send(self.turn_token()) {
                Ok(()) => {
                    state.holder_place = Some(waiter.place);
                    state.grant();
                    return;
                }
                // That waiter gave up; disarm the returned token (we hold the lock) and go on.
                Err(mut unused) => unused.armed = false,
            }
        }
        state.busy = false;
        state.holder_place = None;
        // Nobody waits: every flow is idle, so their history no longer matters.
        state.finish.clear();
        state.virtual_time = 0;
    }

    /// How long a request of `flow` that holds a queue place will wait for its admission: its
    /// place in the fair order (the turn's holder included) times the recent mean hold of a
    /// turn. `None` until enough turns were seen to tell.
    pub fn estimated_wait(&self, flow: &Flow) -> Option<Duration> {
        let state = self.state.lock();
        if state.holds < HOLD_SAMPLES_NEEDED {
            return None;
        }
        let position = state.ahead(flow) + 1;
        Some(Duration::from_secs_f64(
            (position as f64 * state.mean_hold).clamp(0.0, 1e9),
        ))
    }

    /// Requests that would be served before a request of `flow` arriving now (the turn's
    /// holder included), each needing a quota slot before it.
    pub fn ahead_of_newcomer(&self, flow: &Flow) -> Ahead {
        let state = self.state.lock();
        let mine = state.shares.get(&flow.id).map_or(0, |s| s.places);
        let ahead = Ahead::default();
        ahead.set(
            state.ahead_holding(flow, mine + 1) + state.holder(),
            state.turns_passed,
        );
        ahead
    }

    /// Notes in `ahead` that nobody is ahead from now on: the question holds the turn.
    pub fn count_none(&self, ahead: &Ahead) {
        ahead.set(0, self.state.lock().turns_passed);
    }

    /// Of the requests `ahead` counted, those still to pass the turn on: the count less the
    /// turns passed since. A count kept as it was would include a request ahead twice once it
    /// had reserved its slot (in the quota's count, and again here), and refuse a question
    /// the quota can serve. An estimate that takes every turn passed to be one it counted: a
    /// request served out of arrival order (another key's, with a smaller fair-order tag)
    /// makes it one short, so the question waits and hears at its own reservation instead
    /// of at once; it is never refused for it.
    pub fn still_ahead(&self, ahead: &Ahead) -> usize {
        let (counted, then) = ahead.get();
        let passed = self.state.lock().turns_passed.saturating_sub(then);
        counted.saturating_sub(usize::try_from(passed).unwrap_or(usize::MAX))
    }

    /// Requests waiting for the turn (including ones that gave up but are not yet skipped).
    pub fn waiting(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Queue places taken now.
    pub fn queued(&self) -> usize {
        self.state.lock().taken
    }

    /// Entries in the gate's maps now; each belongs to a request in the queue, so the gate
    /// holds no more than the queue's bound (every one is freed when the queue drains).
    pub fn entries(&self) -> usize {
        let state = self.state.lock();
        state.shares.len() + state.finish.len() + state.places.len() + state.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                    let place = gate.enqueue(&f).unwrap();
                    let Waited::Turn(turn) = gate.turn(&place, &f, until).await else {
                        panic!("no turn");
                    };
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

    #[test]
    fn a_newcomer_counts_the_turns_holder_until_it_passes_the_turn() {
        let gate = FairGate::new(8);
        let a = flow("a", 1);
        let newcomer = |gate: &FairGate| gate.still_ahead(&gate.ahead_of_newcomer(&a));
        assert_eq!(newcomer(&gate), 0);
        let turn = gate.try_turn().expect("the turn is free");
        // The holder has not reserved its quota slot yet: it goes first.
        assert_eq!(newcomer(&gate), 1);
        let place = gate.enqueue(&a).expect("a place");
        assert_eq!(place.ahead, 1);
        assert_eq!(newcomer(&gate), 2);
        drop(place);
        drop(turn);
        assert_eq!(newcomer(&gate), 0);
    }

    #[test]
    fn a_count_of_those_ahead_drops_by_each_turn_passed_since() {
        let gate = FairGate::new(8);
        let a = flow("a", 1);
        let holder = gate.try_turn().expect("the turn is free");
        let second = gate.enqueue(&a).expect("a place");
        let third = gate.enqueue(&a).expect("a place");
        let counted = Ahead::default();
        third.count_into(&counted);
        // The holder and the second, neither of which has reserved its quota slot.
        assert_eq!(gate.still_ahead(&counted), 2);
        // The holder reserves and passes the turn on: it is in the quota's count now, so no
        // longer ahead.
        drop(holder);
        assert_eq!(gate.still_ahead(&counted), 1);
        // The same count read before the turn passed would have said 2: counted twice.
        assert_eq!(third.ahead, 2);
        drop(second);
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
        let a = flow("A", 1);
        let place = gate.enqueue(&a).unwrap();
        assert!(matches!(
            gate.turn(&place, &a, soon).await,
            Waited::TimedOut
        ));
        drop(place);
        drop(held);
        assert!(gate.try_turn().is_some());
        assert_eq!(gate.entries(), 0);
    }

    /// Queues requests of `flows` (name, weight, count) in order behind a held turn, on a
    /// gate of `max_queue` places; returns how many of each got a place and kept it.
    async fn places(max_queue: usize, flows: &[(&str, u32, usize)]) -> Vec<(String, usize)> {
        let gate = FairGate::new(max_queue);
        let held = gate.try_turn().unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        let mut waiting = Vec::new();
        for &(name, weight, n) in flows {
            for _ in 0..n {
                let f = flow(name, weight);
                let Ok(place) = gate.enqueue(&f) else {
                    continue;
                };
                let g = gate.clone();
                waiting.push((
                    name.to_owned(),
                    tokio::spawn(async move {
                        let waited = g.turn(&place, &f, until).await;
                        !matches!(waited, Waited::Displaced)
                    }),
                ));
                tokio::task::yield_now().await;
            }
        }
        assert!(gate.queued() <= max_queue);
        drop(held);
        let mut kept: Vec<(String, usize)> = Vec::new();
        for (name, task) in waiting {
            if task.await.unwrap() {
                match kept.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => *count += 1,
                    None => kept.push((name, 1)),
                }
            }
        }
        assert_eq!(gate.queued(), 0);
        assert_eq!(
            gate.entries(),
            0,
            "the gate's maps are empty once the queue is"
        );
        kept
    }

    #[tokio::test]
    async fn a_flood_from_one_key_is_displaced_before_another_key_is_refused() {
        // A fills the queue, then B's one request takes the place of A's newest.
        let kept = places(20, &[("A", 1, 40), ("B", 1, 1)]).await;
        assert_eq!(kept, [("A".to_owned(), 19), ("B".to_owned(), 1)]);
    }

    #[tokio::test]
    async fn a_lone_key_may_use_the_whole_queue() {
        let kept = places(20, &[("A", 1, 40)]).await;
        assert_eq!(kept, [("A".to_owned(), 20)]);
    }

    #[tokio::test]
    async fn two_floods_end_with_even_shares_and_weights_count() {
        let kept = places(20, &[("A", 1, 40), ("B", 1, 40)]).await;
        assert_eq!(kept, [("A".to_owned(), 10), ("B".to_owned(), 10)]);
        // B weighs 3: its share is three times A's.
        let kept = places(20, &[("A", 1, 40), ("B", 3, 40)]).await;
        assert_eq!(kept, [("A".to_owned(), 5), ("B".to_owned(), 15)]);
    }

    #[tokio::test]
    async fn equal_shares_do_not_churn() {
        // One place each: B's second request would only swap who holds more.
        let kept = places(2, &[("A", 1, 1), ("B", 1, 2)]).await;
        assert_eq!(kept, [("A".to_owned(), 1), ("B".to_owned(), 1)]);
    }
}
