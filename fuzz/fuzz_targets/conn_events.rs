//! The Proactor's connection state machine fed random event sequences against a model of
//! the kernel (src/proactor/conn_check.rs): buffers, sends, recvs and the close obey the
//! ring's rules, the bytes sent are the right ones, and the connection always closes.
//! `scripts/fuzz.sh` runs it (see README, Fuzzing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    c1m::proactor::conn_check::run(data);
});
