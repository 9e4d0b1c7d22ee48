//! One cached answer through the router in process (`tower::ServiceExt::oneshot`, no socket),
//! per profile: the time and the allocations of the cheapest request the service serves.
//! `cargo bench -p learning-chat --bench cached_answer` prints both per request (divan's
//! allocation profiler counts them); bench/RESULTS.md records the figures, and
//! `tests/allocations` fails when a profile's count grows by more than half.

// A benchmark reports by failing, like a test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/allocations/rig.rs"]
mod rig;

use learning_chat_testkit::redis::RedisProcess;
use rig::{Profile, Rig};

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    divan::main();
}

/// The profiles: with Redis, a server of its own on a free port.
const PROFILES: &[&str] = &["defaults", "keys", "redis+keys", "redis+limits"];

#[divan::bench(args = PROFILES, sample_count = 200, sample_size = 20)]
fn cached_answer(bencher: divan::Bencher, profile: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = profile.starts_with("redis").then(RedisProcess::start);
    let url = redis.as_ref().map(RedisProcess::url);
    let kind = match profile {
        "defaults" => Profile::Defaults,
        "redis+limits" => Profile::KeysWithLimits,
        _ => Profile::Keys,
    };
    let rig = runtime.block_on(Rig::start(kind, url.as_deref()));
    bencher
        .with_inputs(|| rig.request())
        .bench_local_values(|request| runtime.block_on(rig.serve(request)));
}
