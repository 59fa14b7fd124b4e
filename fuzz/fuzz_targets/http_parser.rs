//! The HTTP request parser and the load generator's answer check on arbitrary bytes: no
//! panic, and the same answers whatever the split (the first byte picks the cut points),
//! with the access log's capture on or off; the capture records one request per answer,
//! the same whatever the split.
//! `cargo +nightly fuzz run http_parser` (see README, Fuzzing).

#![no_main]

use std::time::Instant;

use c1m::proto::http::{Capture, Date, Limits, Logged, ResponseCheck, Session, BODY};
use libfuzzer_sys::fuzz_target;

type Answers = (Vec<u8>, u32, bool, Option<Vec<Logged>>);

fn answers(input: &[u8], cuts: &[usize], limits: &Limits, now: Instant, log: bool) -> Answers {
    let date = Date::at(784_111_777);
    let mut s = Session::new();
    let mut out = Vec::new();
    let mut capture = log.then(Capture::default);
    let (mut n, mut close, mut from) = (0, false, 0);
    for &cut in cuts.iter().chain([&input.len()]) {
        let part = &input[from..cut];
        let log = capture.as_mut().map(|c| (c, now));
        let o = s.on_input_logged(part, limits, &date, &mut out, log);
        n += o.answers;
        close |= o.close;
        from = cut;
    }
    (out, n, close, capture.map(|c| c.answered))
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
    let now = Instant::now();
    let whole = answers(input, &[], &limits, now, true);
    assert_eq!(answers(input, &cuts, &limits, now, true), whole, "a split changed the answers");
    let logged = whole.3.as_ref().expect("captured");
    assert_eq!(logged.len(), whole.1 as usize, "one record per answer");
    let (out, n, close, _) = answers(input, &cuts, &limits, now, false);
    assert_eq!((&out, n, close), (&whole.0, whole.1, whole.2), "logging changed the answers");
    // The check reads our own answers back; and anything at all without panicking.
    let _ = ResponseCheck::new().on_input(&whole.0, BODY, |_| {});
    let _ = ResponseCheck::new().on_input(input, BODY, |_| {});
});
