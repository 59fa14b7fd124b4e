//! The HTTP request parser and the load generator's answer check on arbitrary bytes: no
//! panic, and the same answers whatever the split (the first byte picks the cut points).
//! `cargo +nightly fuzz run http_parser` (see README, Fuzzing).

#![no_main]

use c1m::proto::http::{Date, Limits, ResponseCheck, Session, BODY};
use libfuzzer_sys::fuzz_target;

fn answers(input: &[u8], cuts: &[usize], limits: &Limits) -> (Vec<u8>, u32, bool) {
    let date = Date::at(784_111_777);
    let mut s = Session::new();
    let mut out = Vec::new();
    let (mut n, mut close, mut from) = (0, false, 0);
    for &cut in cuts.iter().chain([&input.len()]) {
        let o = s.on_input(&input[from..cut], limits, &date, &mut out);
        n += o.answers;
        close |= o.close;
        from = cut;
    }
    (out, n, close)
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_header_bytes: 64 + u32::from(seed) * 4,
        max_body_bytes: u64::from(seed) * 16,
    };
    let step = usize::from(seed % 17) + 1;
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let whole = answers(input, &[], &limits);
    assert_eq!(answers(input, &cuts, &limits), whole, "a split changed the answers");
    // The check reads our own answers back; and anything at all without panicking.
    let _ = ResponseCheck::new().on_input(&whole.0, BODY, |_| {});
    let _ = ResponseCheck::new().on_input(input, BODY, |_| {});
});
