//! What the connection timers cost at a million connections: `cargo bench --bench timer`
//!
//! One shard's timer wheel (`c1m::timer::Wheel`, with the servers' HTTP defaults: idle 120 s,
//! header 30 s, body 60 s, send 60 s, linger 5 s) holding `--conns` connections (1,000,000)
//! under the C1000K heartbeat (`--rate` 50,000 requests/s, each on a random connection), on
//! a simulated clock: per request the calls a shard makes (bytes received, the request part
//! after parsing, output owed, bytes sent, nothing owed), and per 100 ms tick one `expire`; a connection that times out is
//! replaced by a new one, so the count stays put. Measured: CPU time of the timer calls per
//! simulated second (as a share of one core), per request, and the resident memory the wheel
//! adds. Writes bench/results/timer-<date>-<kernel>.md and .json.

#[path = "common.rs"]
mod common;

use std::time::{Duration, Instant};

use c1m::proto::http::Reading;
use c1m::timer::{LINGER, TICK, Timeouts, Wheel};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "timer",
    override_usage = "cargo bench --bench timer [-- OPTIONS]",
    about = "The timer wheel at a million connections"
)]
struct Opts {
    /// Connections held by the wheel
    #[arg(long, value_name = "N", default_value = "1000000", value_parser = clap::value_parser!(u32).range(1..))]
    conns: u32,
    /// Requests per second, each on a random connection
    #[arg(long, value_name = "R", default_value = "50000", value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// Seconds simulated
    #[arg(long, value_name = "S", default_value = "600", value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    #[command(flatten)]
    output: common::Output,
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let (o, args) = common::parse::<Opts>(|c| c);
    let (conns, rate, seconds, out) = (o.conns, o.rate, o.seconds, o.output.out);
    let timeouts = Timeouts {
        idle: Some(Duration::from_secs(120)),
        header: Some(Duration::from_secs(30)),
        body: Some(Duration::from_secs(60)),
        send: Some(Duration::from_secs(60)),
        linger: Some(LINGER),
    };
    let epoch = Instant::now();
    let rss_before = vm_rss_kib();
    let mut wheel = Wheel::new(timeouts, epoch);
    let t = Instant::now();
    for key in 0..conns {
        wheel.start(key);
    }
    let start_ns = t.elapsed().as_nanos() as f64 / f64::from(conns);
    let rss_kib = vm_rss_kib().saturating_sub(rss_before);

    let ticks = seconds * 1_000_000_000 / TICK.as_nanos() as u64;
    let per_tick = (rate as f64 * TICK.as_secs_f64()).round() as usize;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut keys = vec![0u32; per_tick];
    let mut expired = Vec::new();
    let (mut busy, mut requests, mut timed_out) = (Duration::ZERO, 0u64, 0u64);
    for tick in 1..=ticks {
        for k in &mut keys {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *k = (rng % u64::from(conns)) as u32;
        }
        let t = Instant::now();
        wheel.set_clock(epoch + TICK * tick as u32);
        for &k in &keys {
            wheel.received(k);
            wheel.reading(k, Reading::Between);
            wheel.owed(k, true);
            wheel.sent(k);
            wheel.owed(k, false);
        }
        wheel.expire(&mut expired);
        for (k, _) in expired.drain(..) {
            timed_out += 1;
            wheel.start(k);
        }
        busy += t.elapsed();
        requests += per_tick as u64;
    }
    let cpu_pct = busy.as_secs_f64() / seconds as f64 * 100.0;
    let per_request_ns = busy.as_nanos() as f64 / requests as f64;
    let (date, kernel, commit, machine) = (
        common::today(),
        common::kernel(),
        common::commit(),
        common::machine(),
    );
    let cmd = if args.is_empty() {
        "cargo bench --bench timer".to_string()
    } else {
        format!("cargo bench --bench timer -- {}", args.join(" "))
    };
    println!(
        "timer: {conns} connections, {rate} requests/s, {seconds} s simulated: {busy:.2?} in the \
         timer calls = {cpu_pct:.3} % of one core ({per_request_ns:.0} ns a request), \
         {timed_out} timed out and replaced; start {start_ns:.0} ns a connection; the wheel \
         adds {rss_kib} KiB resident"
    );
    let json = serde_json::json!({
        "date": date, "kernel": kernel, "commit": commit, "machine": machine, "command": cmd,
        "conns": conns, "rate": rate, "simulated_s": seconds,
        "timeouts_s": {"idle": 120, "header": 30, "body": 60, "send": 60, "linger": LINGER.as_secs()},
        "timer_cpu_s": busy.as_secs_f64(), "cpu_pct_of_one_core": cpu_pct,
        "ns_per_request": per_request_ns, "ns_per_start": start_ns,
        "timed_out_and_replaced": timed_out, "rss_added_kib": rss_kib,
    });
    let md = format!(
        "# Timer wheel at {conns} connections\n\n`{cmd}` on {date}, kernel {kernel}, commit \
         {commit}, {machine}.\n\nOne shard's wheel with the HTTP defaults (idle 120 s, header \
         30 s, body 60 s, send 60 s, linger 5 s), {conns} connections, {rate} requests/s on \
         random connections (received, request part, owed, sent, nothing owed), one expire \
         per 100 ms tick, \
         {seconds} s simulated.\n\n| figure | value |\n|---|---|\n| CPU in timer calls | \
         {:.3} s over {seconds} s simulated = {cpu_pct:.3} % of one core |\n| per request | \
         {per_request_ns:.0} ns |\n| per new connection (`start`) | {start_ns:.0} ns |\n| \
         resident memory added | {rss_kib} KiB ({:.1} B a connection) |\n| timed out and \
         replaced | {timed_out} |\n",
        busy.as_secs_f64(),
        rss_kib as f64 * 1024.0 / f64::from(conns),
    );
    let stem = format!("{out}/timer-{date}-{kernel}");
    for (path, text) in [
        (format!("{stem}.md"), md),
        (
            format!("{stem}.json"),
            serde_json::to_string_pretty(&json).expect("json") + "\n",
        ),
    ] {
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("timer: writing {path}: {e}");
            std::process::exit(1);
        }
        println!("timer: wrote {path}");
    }
}
