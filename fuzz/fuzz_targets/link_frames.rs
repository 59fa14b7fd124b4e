//! The frames between a Redis worker and the keyspace owner (`c1m::reactor::frame`) on
//! arbitrary bytes: no panic; the inbox, fed in two pieces cut where the first byte says,
//! yields the same frames, and fails at the same frame, as decoding the whole at once; a
//! decoded frame encodes back to the bytes it came from (an open frame's address to the
//! same address; an empty data frame, which no encoder makes, to nothing). `scripts/fuzz.sh` runs it (see README, Fuzzing).

#![no_main]

use c1m::reactor::frame::{self, Frame, Inbox};
use libfuzzer_sys::fuzz_target;

/// Every frame of `input` decoded at once, as its debug text, and whether it ended on an error.
fn whole(input: &[u8]) -> (Vec<String>, bool) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match frame::decode(&input[at..]) {
            Ok(Some((f, used))) => {
                let mut again = Vec::new();
                match &f {
                    Frame::Open { id, peer } => frame::open(&mut again, *id, *peer),
                    Frame::Data { id, bytes } => frame::data(&mut again, *id, bytes),
                    Frame::Close { id } => frame::close(&mut again, *id),
                    Frame::Ran { id } => frame::ran(&mut again, *id),
                }
                match f {
                    // Never encoded (`frame::data` of nothing is no frame), harmless decoded.
                    Frame::Data { bytes: [], .. } => {}
                    Frame::Open { .. } => {
                        let (back, _) = frame::decode(&again).unwrap().unwrap();
                        assert_eq!(back, f, "an open frame re-encoded");
                    }
                    _ => assert_eq!(again, &input[at..at + used], "a frame re-encoded"),
                }
                frames.push(format!("{f:?}"));
                at += used;
            }
            Ok(None) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let (want, failed) = whole(input);
    let cut = input.first().map_or(0, |b| *b as usize % (input.len() + 1));
    let mut inbox = Inbox::default();
    let mut got = Vec::new();
    let mut err = false;
    'feed: for part in [&input[..cut], &input[cut..]] {
        inbox.extend(part);
        loop {
            match inbox.next_frame() {
                Ok(Some(f)) => got.push(format!("{f:?}")),
                Ok(None) => break,
                Err(_) => {
                    err = true;
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, want);
    assert_eq!(err, failed);
});
