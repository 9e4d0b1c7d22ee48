//! Allocations per cached answer, counted: the cheapest request's cost in a number that does
//! not depend on how busy the machine is. Each profile's count is held to its recorded figure
//! plus 50%; bench/RESULTS.md has the figures (`cargo bench -p learning-chat --bench
//! cached_answer` prints them per request).

// A test reports by failing; and a counting allocator must implement the unsafe `GlobalAlloc`
// (it only forwards every call to the system allocator).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

mod rig;

use learning_chat::serve::AppService;
use learning_chat_testkit::redis::RedisProcess;
use rig::{Profile, Rig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts the allocations (and reallocations) made on a thread while it is counting.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only a
// const-initialised thread-local and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Requests per counted batch.
const BATCH: u64 = 200;
/// Batches; the fewest allocations of any batch is the figure, so a batch that also ran a
/// background task (the ledger, a key refresh, moka's upkeep) does not count against it.
const BATCHES: usize = 5;

/// Allocations per cached answer: the request (built beforehand, as hyper would have parsed
/// it) sent through the router and its body read, all on this thread (a current-thread
/// runtime runs every task of the request here).
async fn allocations_per_answer(rig: &Rig<impl AppService>) -> u64 {
    let mut fewest = u64::MAX;
    for _ in 0..BATCHES {
        let requests: Vec<_> = (0..BATCH).map(|_| rig.request()).collect();
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        for request in requests {
            let status = rig.serve(request).await;
            assert!(status.is_success(), "{status}");
        }
        COUNTING.with(|c| c.set(false));
        fewest = fewest.min(ALLOCATIONS.load(Ordering::Relaxed));
    }
    fewest.div_ceil(BATCH)
}

/// Fails when `profile`'s count grew more than 50% over `recorded`.
async fn check(profile: Profile, redis: Option<&str>, recorded: u64) {
    let rig = Rig::start(profile, redis).await;
    let count = allocations_per_answer(&rig).await;
    eprintln!(
        "{profile:?} (redis: {}): {count} allocations per cached answer",
        redis.is_some()
    );
    assert!(
        count <= recorded + recorded / 2,
        "{profile:?}: {count} allocations per cached answer, recorded {recorded} (+50% allowed)"
    );
    assert!(count > 0, "the counter counts");
}

#[tokio::test(flavor = "current_thread")]
async fn a_cached_answer_with_the_defaults_allocates_no_more_than_recorded() {
    check(Profile::Defaults, None, 14).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_cached_answer_with_a_key_allocates_no_more_than_recorded() {
    check(Profile::Keys, None, 15).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_cached_answer_with_redis_and_a_limited_key_allocates_no_more_than_recorded() {
    let redis = RedisProcess::start();
    check(Profile::KeysWithLimits, Some(&redis.url()), 25).await;
    check(Profile::Keys, Some(&redis.url()), 15).await;
}
