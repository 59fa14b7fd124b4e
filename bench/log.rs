//! The access log's cost, and what a stalling disk does to each engine: `cargo bench --bench log`
//!
//! 1. **Cost.** Each engine serving HTTP and echo, `--access-log` off and on (a file in the
//!    bench's temporary directory), at a fixed rate (`uring-load --rate`) and closed loop:
//!    server CPU per request (user+sys of the server over the whole run, per request
//!    answered), p99, and the closed loop's throughput. The cells take turns: engine, then
//!    log off and on, in every repetition. Echo logs one line per connection, at its close,
//!    so with the run's connections held its cost is the log's upkeep alone.
//! 2. **A stalling disk.** HTTP at a fixed rate with the log on a disk that stalls writes
//!    (`scripts/slow-disk.sh`: a FUSE filesystem whose every write(2) waits `--stall-ms`
//!    while the stall is on), `--access-log-buffer` large enough to hold the stall's lines.
//!    After `--stall-at` seconds the stall is on for `--stall-ms`; the requests the server
//!    answered while it was on are read from its `--metrics` (c1m_requests_total) at the
//!    stall's start and end. The Reactor's write(2) holds its loop for the stall; the
//!    Proactor's IORING_OP_WRITE waits in the kernel while its thread serves on.
//!
//! Needs root and /dev/fuse for part 2 (`--no-stall` skips it). Writes
//! bench/results/log-<date>-<kernel>.md and .json. Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "log",
    override_usage = "cargo bench --bench log [-- OPTIONS]",
    about = "The access log's cost per request, and each engine on a disk that stalls"
)]
struct Flags {
    /// The fixed rate of the cost runs, requests/s
    #[arg(long, value_name = "R", default_value = "40000")]
    rate: u64,
    /// Connections of the cost runs
    #[arg(long, value_name = "N", default_value = "500")]
    conns: u64,
    /// The fixed rate of the stall runs, requests/s
    #[arg(long, value_name = "R", default_value = "20000")]
    stall_rate: u64,
    /// How long the disk stalls, ms (at least the Reactor's 1 s flush interval, so that a
    /// write of its log falls in the stall)
    #[arg(long, value_name = "MS", default_value = "2000")]
    stall_ms: u64,
    /// When in the stall run the disk stalls, s after the load starts
    #[arg(long, value_name = "S", default_value = "2")]
    stall_at: f64,
    /// Skip the stall runs (no root or FUSE here)
    #[arg(long)]
    no_stall: bool,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
}

const ENGINES: [&str; 2] = ["uring-server", "epoll-server"];

fn bin(name: &str) -> &'static str {
    match name {
        "uring-server" => env!("CARGO_BIN_EXE_uring-server"),
        "epoll-server" => env!("CARGO_BIN_EXE_epoll-server"),
        _ => env!("CARGO_BIN_EXE_uring-load"),
    }
}

/// The first port of a `free_ports` range.
fn first(ports: &str) -> u16 {
    let p = ports.split('-').next().unwrap_or(ports);
    p.parse().expect("free_ports gives a port range")
}

/// `uring-load` against `port`, closed loop or at `rate`: its JSON report.
fn load(f: &Flags, port: u16, proto: &str, conns: u64, rate: Option<u64>, secs: f64) -> Value {
    let json = std::env::temp_dir().join(format!("c1m-log-bench-{}.json", std::process::id()));
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", f.cpus.load_cpus.as_str(), bin("uring-load")])
        .args(["--host", "127.0.0.1", "--ports", &port.to_string()])
        .args(["--proto", proto, "--conns", &conns.to_string()])
        .args([
            "--duration",
            &secs.to_string(),
            "--warmup",
            &f.runs.warmup.to_string(),
        ])
        .args(["--quiet", "--json", json.to_str().unwrap()]);
    if let Some(r) = rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let st = cmd.status().expect("uring-load runs");
    let text = std::fs::read_to_string(&json).unwrap_or_default();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("uring-load ({st}) wrote no report: {e}"));
    assert!(
        v["errors"].as_object().is_some_and(|e| e.is_empty()),
        "uring-load saw errors: {v}"
    );
    v
}

fn server_args<'a>(
    port: &'a str,
    proto: &'a str,
    log: Option<&'a str>,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "--host",
        "127.0.0.1",
        "--ports",
        port,
        "--cores",
        "1",
        "--proto",
        proto,
    ];
    if let Some(l) = log {
        a.extend(["--access-log", l]);
    }
    a.extend(extra);
    a
}

/// One cost run: a fresh server, a load, the server's CPU per request.
fn cost_run(f: &Flags, engine: &str, proto: &str, log: Option<&Path>, rate: Option<u64>) -> Value {
    let port = common::free_ports(1);
    let logs = log.map(|p| p.to_str().unwrap().to_string());
    if let Some(p) = log {
        let _ = std::fs::remove_file(p);
    }
    let args = server_args(&port, proto, logs.as_deref(), &[]);
    let server = common::Proc::server_on(f.cpus.server_cpus.as_str(), bin(engine), &args);
    let (u0, s0) = server.cpu();
    let r = load(f, first(&port), proto, f.conns, rate, f.runs.duration);
    let (u1, s1) = server.cpu();
    server.stop();
    let requests = r["requests"].as_f64().unwrap_or(0.0).max(1.0);
    let lines = log.map(|p| std::fs::read_to_string(p).map_or(0, |t| t.lines().count()));
    json!({
        "engine": engine, "proto": proto, "log": log.is_some(),
        "mode": if rate.is_some() { "rate" } else { "closed" },
        "requests": r["requests"], "throughput_rps": r["throughput_rps"],
        "p99_us": r["latency_us"]["p99"],
        "cpu_us_per_request": ((u1 - u0) + (s1 - s0)) / requests * 1e6,
        "log_lines": lines,
    })
}

/// The sum of `c1m_requests_total` a server's `--metrics` reports now.
fn requests_now(metrics: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(metrics) else {
        return 0;
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .filter(|l| l.starts_with("c1m_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn slow_disk(args: &[&str]) -> Result<(), String> {
    let st = Command::new("scripts/slow-disk.sh")
        .args(args)
        .status()
        .map_err(|e| format!("scripts/slow-disk.sh: {e}"))?;
    st.success()
        .then_some(())
        .ok_or_else(|| format!("scripts/slow-disk.sh {}: {st}", args.join(" ")))
}

/// One stall run: the log on the slow disk, the stall on for `stall_ms` during the load.
fn stall_run(f: &Flags, engine: &str, dir: &Path) -> Result<Value, String> {
    let d = dir.to_str().unwrap();
    slow_disk(&["up", d, "--off", "--stall-ms", &f.stall_ms.to_string()])?;
    let log = dir.join("access.log");
    let port = common::free_ports(1);
    let metrics = format!("127.0.0.1:{}", first(&common::free_ports(1)));
    // Room for the stall's lines (about 100 bytes each) twice over.
    let buffer = (f.stall_rate * f.stall_ms / 1000 * 200)
        .max(1 << 20)
        .to_string();
    let logs = log.to_str().unwrap().to_string();
    let summary = dir.with_extension("summary.json");
    let summary_s = summary.to_str().unwrap().to_string();
    let extra = [
        "--access-log-buffer",
        buffer.as_str(),
        "--metrics",
        metrics.as_str(),
        "--stats-json",
        summary_s.as_str(),
    ];
    let args = server_args(&port, "http", Some(&logs), &extra);
    let server = common::Proc::server_on(f.cpus.server_cpus.as_str(), bin(engine), &args);
    let secs = f.stall_at + f.stall_ms as f64 / 1000.0 + 2.0;
    let stall = {
        let (d, at, ms, metrics) = (d.to_string(), f.stall_at, f.stall_ms, metrics.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(at));
            // The window is from the stall's start (`on` returns once it applies) to just
            // before its end.
            let on = slow_disk(&["stall", &d, "on"]);
            let t = Instant::now();
            let before = requests_now(&metrics);
            std::thread::sleep(Duration::from_millis(ms));
            let during = requests_now(&metrics).saturating_sub(before);
            let took = t.elapsed();
            let off = slow_disk(&["stall", &d, "off"]);
            (on.and(off), during, took)
        })
    };
    let r = load(f, first(&port), "http", 200, Some(f.stall_rate), secs);
    let (stalled, during, took) = stall.join().expect("the stall thread");
    server.stop();
    let lines = std::fs::read_to_string(&log).map_or(0, |t| t.lines().count());
    let totals: Value = std::fs::read_to_string(&summary)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let _ = slow_disk(&["down", d]);
    stalled?;
    Ok(json!({
        "engine": engine, "rate": f.stall_rate, "stall_ms": f.stall_ms,
        "answered_during_stall": during, "stall_window_s": took.as_secs_f64(),
        "expected_during_stall": (f.stall_rate as f64 * took.as_secs_f64()).round(),
        "requests": r["requests"], "log_lines": lines,
        "server_requests": totals["totals"]["requests"],
        "log_stall_ms": totals["totals"]["log_stall_us"].as_u64().map(|u| u / 1000),
        "p50_us": r["latency_us"]["p50"], "p99_us": r["latency_us"]["p99"],
        "max_us": r["latency_us"]["max"],
    }))
}

fn main() {
    let (f, args) = common::parse::<Flags>(|c| c);
    let tmp = std::env::temp_dir().join(format!("c1m-log-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let log = tmp.join("access.log");
    let mut cost = Vec::new();
    for rep in 0..f.runs.reps {
        for proto in ["http", "echo"] {
            for mode in [Some(f.rate), None] {
                for engine in ENGINES {
                    for on in [false, true] {
                        let r = cost_run(&f, engine, proto, on.then_some(log.as_path()), mode);
                        eprintln!("log: rep {rep} {r}");
                        cost.push(r);
                    }
                }
            }
        }
    }
    let mut stall = Vec::new();
    if !f.no_stall {
        for engine in ENGINES {
            match stall_run(&f, engine, &tmp.join("slow")) {
                Ok(r) => {
                    eprintln!("log: stall {r}");
                    stall.push(r);
                }
                Err(e) => eprintln!("log: stall run of {engine} not done: {e}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    write_results(&f, &args, &cost, &stall);
}

fn write_results(f: &Flags, args: &[String], cost: &[Value], stall: &[Value]) {
    let (date, kernel, commit, machine) = (
        common::today(),
        common::kernel(),
        common::commit(),
        common::machine(),
    );
    let cmd = format!("cargo bench --bench log -- {}", args.join(" "));
    let mut md = format!(
        "# The access log: its cost, and a stalling disk\n\n`{cmd}` on {date}, kernel {kernel}, \
         commit {commit}, {machine}. Server on CPU {}, uring-load on {}.\n\n## Cost \
         ({} connections; fixed rate {} req/s, and closed loop)\n\n| proto | mode | engine | \
         log | CPU us/request | p99 us | req/s |\n|---|---|---|---|---|---|---|\n",
        f.cpus.server_cpus, f.cpus.load_cpus, f.conns, f.rate
    );
    for r in cost {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {} | {:.0} |",
            r["proto"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            r["engine"].as_str().unwrap_or(""),
            if r["log"].as_bool() == Some(true) {
                "on"
            } else {
                "off"
            },
            r["cpu_us_per_request"].as_f64().unwrap_or(0.0),
            r["p99_us"],
            r["throughput_rps"].as_f64().unwrap_or(0.0),
        );
    }
    if !stall.is_empty() {
        let _ = write!(
            md,
            "\n## A disk that stalls every write for {} ms (HTTP, {} req/s, 200 connections)\n\n\
             | engine | answered while stalled | of offered | p50 us | p99 us | max us | \
             a line per request |\n|---|---|---|---|---|---|---|\n",
            f.stall_ms, f.stall_rate
        );
        for r in stall {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                r["engine"].as_str().unwrap_or(""),
                r["answered_during_stall"],
                r["expected_during_stall"],
                r["p50_us"],
                r["p99_us"],
                r["max_us"],
                r["log_lines"] == r["server_requests"],
            );
        }
    }
    let stem = format!("{}/log-{date}-{kernel}", f.output.out);
    let all = json!({"date": date, "kernel": kernel, "commit": commit, "machine": machine,
                     "command": cmd, "cost": cost, "stall": stall});
    std::fs::write(format!("{stem}.md"), &md).expect("write the .md");
    std::fs::write(
        format!("{stem}.json"),
        serde_json::to_string_pretty(&all).unwrap(),
    )
    .expect("write the .json");
    print!("{md}");
    eprintln!("wrote {stem}.md and .json");
}
