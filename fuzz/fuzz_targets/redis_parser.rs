//! The Redis protocol's Session on arbitrary bytes: no panic; the same replies, answer
//! count, close and journal whether the input comes whole or split where the first byte
//! says; the access log's capture records one command per answer; and memory stays
//! bounded by the input (what the session holds, the keyspace's estimate).
//! `scripts/fuzz.sh` runs it (see README, Fuzzing).

#![no_main]

use std::time::Instant;

use c1m::proto::redis::{Capture, Config, Env, Keyspace, Limits, Session};
use libfuzzer_sys::fuzz_target;

/// A fixed clock: replies may not depend on when the fuzzer runs.
const NOW_MS: u64 = 1_700_000_000_000;

type Answers = (Vec<u8>, u32, bool, Vec<u8>, usize);

fn answers(input: &[u8], cuts: &[usize], limits: Limits, now: Instant) -> Answers {
    let ks = Keyspace::new(Config {
        maxmemory: Some(64 * 1024),
        journal: true,
    });
    let env = Env {
        keyspace: &ks,
        limits,
        now_ms: NOW_MS,
        now,
    };
    let mut s = Session::new();
    let (mut out, mut n, mut close, mut from) = (Vec::new(), 0, false, 0);
    let mut capture = Capture::default();
    for &cut in cuts.iter().chain([&input.len()]) {
        if close {
            break;
        }
        let o = s.on_input(&input[from..cut], &env, &mut out, Some(&mut capture));
        n += o.answers;
        close |= o.close;
        from = cut;
        assert!(s.held() <= cut, "holds more than it was given");
    }
    assert_eq!(capture.answered.len(), n as usize, "one record per answer");
    // Every key, value and element came from the input, each with a bounded overhead.
    assert!(
        ks.used_memory() <= 100 * input.len() as u64 + 1024,
        "memory estimate"
    );
    // Keys with a TTL go, in both: lazy expiry journals nothing, so a key that expired
    // unseen is in the replay; the keys without one must match.
    while ks.sweep(u64::MAX) > 0 {}
    let journal = ks
        .journal()
        .expect("journaled")
        .take(Vec::new())
        .map(|j| j.0);
    (
        out,
        n,
        close,
        journal.unwrap_or_default(),
        ks.len() as usize,
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_bulk_bytes: u64::from(seed) * 8,
        max_multibulk: u32::from(seed % 32),
    };
    let step = usize::from(seed % 13) + 1;
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let now = Instant::now();
    let whole = answers(input, &[], limits, now);
    assert_eq!(
        answers(input, &cuts, limits, now),
        whole,
        "a split changed the replies"
    );
    // The journal replays to the same keyspace.
    let ks = Keyspace::new(Config::default());
    let r = ks.replay(&whole.3, NOW_MS);
    while ks.sweep(u64::MAX) > 0 {}
    assert_eq!(
        (r.valid, r.error.is_none()),
        (whole.3.len(), true),
        "the journal replays"
    );
    assert_eq!(ks.len() as usize, whole.4, "replay gives the same keys");
});
