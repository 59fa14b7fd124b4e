//! Every server model of the notes in one table: `cargo bench --bench models`
//!
//! Each model (`model-server --model NAME`, all thirteen) at 10, 100, 1,000 and 10,000
//! connections (`--full` adds 100,000), closed loop and at one fixed rate (`--rate`, 10,000
//! requests a second by default), 64 B echo, with `uring-load` as the client. The server runs
//! pinned to the server CPUs, the client to the load CPUs; every run starts a fresh server,
//! and the models take turns, the order rotating at each connection count.
//!
//! How each number is taken:
//! - throughput, p50 and p99: uring-load's, over its measured window (open loop: from each
//!   request's due time, corrected for coordinated omission).
//! - server CPU per request, system calls and context switches per request: `perf stat -I`
//!   attached to the server before the load starts (`task-clock`, `raw_syscalls:sys_enter`,
//!   `context-switches`), so every thread and process it starts later is counted with it:
//!   glibc's AIO threads, fork's children. Only the intervals inside uring-load's measured
//!   window count. The models' own count of their system calls is shown beside it.
//! - memory per connection: the server's resident memory (the proportional set size of it
//!   and its children, so that pages fork's children share count once) and
//!   the kernel's (unreclaimable slab, /proc/meminfo SUnreclaim: sockets, epoll items,
//!   files; both ends of every connection, since the client's sockets are on this host too),
//!   in the middle of the window, less what they were before the load, over the
//!   connections. Below 1,000 connections these are within the noise of the host.
//! - threads and processes: the most seen at once in the server's process tree.
//!
//! A model that cannot hold a count refuses it at start, naming its wall (`--max-conns`
//! beyond its plan), and the cell says so; `iterative` is run anyway (it serves one connection
//! at a time, and the cell shows how many were answered).
//!
//! Writes bench/results/models-<date>-<kernel>-<commit>.md, .json (every run as measured) and
//! .svg (closed-loop throughput and p99 against connections, a line per model). Flags:
//! `-- --help`.

#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c1m::cli::Model;
use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "models",
    override_usage = "cargo bench --bench models [-- OPTIONS]",
    about = "Every server model at 10 to 10,000 connections: throughput, latency, CPU, syscalls, \
             memory"
)]
struct Flags {
    /// Adds 100,000 connections (where --conns is not given), for the models that hold them
    #[arg(long)]
    full: bool,
    /// Connection counts [default: 10,100,1000,10000]
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..))]
    conns: Option<Vec<u64>>,
    /// The models [default: all thirteen]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_enum)]
    models: Option<Vec<Model>>,
    /// Draw FILE.svg again from a result FILE.json this bench wrote, and run nothing
    #[arg(long, value_name = "FILE.json")]
    replot: Option<std::path::PathBuf>,
    /// The fixed rate of the open-loop runs, requests a second over all connections
    #[arg(long, value_name = "R", default_value_t = 10_000)]
    rate: u64,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
}

struct Opts {
    conns: Vec<u64>,
    models: Vec<Model>,
    rate: u64,
    runs: common::Runs,
    cpus: common::Cpus,
    out: String,
    argv: String,
    machine: String,
}

/// Connections per server port (see cost.rs: connects to one port slow as they fill its
/// share of the ephemeral range).
const CONNS_PER_PORT: u64 = 2_500;
/// Echo request size.
const SIZE: u64 = 64;
/// How often the server's memory and tasks are sampled, and perf's interval.
const SAMPLE_MS: u64 = 100;

fn main() {
    // Runs of 2 s after 0.5 s of warm-up, once each: the default run fits in 8 minutes.
    let (f, args) = common::parse::<Flags>(|c| {
        c.mut_arg("duration", |a| a.default_value("2"))
            .mut_arg("warmup", |a| a.default_value("0.5"))
            .mut_arg("reps", |a| a.default_value("1"))
    });
    if let Some(file) = &f.replot {
        if let Err(e) = replot(file) {
            eprintln!("models: {}: {e}", file.display());
            std::process::exit(1);
        }
        return;
    }
    let o = Opts {
        conns: f.conns.unwrap_or_else(|| {
            let mut c = vec![10, 100, 1000, 10_000];
            if f.full {
                c.push(100_000);
            }
            c
        }),
        models: f.models.unwrap_or_else(|| Model::ALL.to_vec()),
        rate: f.rate,
        runs: f.runs,
        cpus: f.cpus,
        out: f.output.out,
        argv: args.join(" "),
        machine: common::machine(),
    };
    if let Err(e) = c1m::sys::pin_current_thread(o.cpus.load_cpus.cpus()[0]) {
        eprintln!("models: pinning to CPU {}: {e}", o.cpus.load_cpus.cpus()[0]);
        std::process::exit(1);
    }
    if let Err(e) = bench(&o) {
        eprintln!("models: {e}");
        std::process::exit(1);
    }
}

/// One run's outcome: measured, or why the model could not be run at that count.
#[derive(Serialize, Clone)]
struct Run {
    model: &'static str,
    conns: u64,
    /// The fixed rate asked; none: closed loop.
    rate_rps: Option<u64>,
    rep: usize,
    #[serde(flatten)]
    outcome: Outcome,
}

#[derive(Serialize, Clone)]
#[serde(untagged)]
enum Outcome {
    Measured(Box<Measured>),
    Cannot { cannot: String },
}

#[derive(Serialize, Clone)]
struct Measured {
    rps: f64,
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    latency_us: Value,
    conns_established: u64,
    /// uring-load's errors by kind (iterative: requests never answered).
    errors: Value,
    cpu_us_per_req: f64,
    syscalls_per_req: f64,
    /// The model's own count of its system calls, over its whole run, per request it served.
    own_syscalls_per_req: f64,
    ctx_switches_per_req: f64,
    /// Proportional set size, server tree.
    pss_bytes_per_conn: f64,
    /// The kernel's slab memory, both ends of each connection (the client's sockets are on
    /// this host too).
    kernel_bytes_per_conn: f64,
    threads: u64,
    processes: u64,
    /// What the model said of its plan (model-server's plan line).
    plan: String,
}

fn bench(o: &Opts) -> Result<(), String> {
    perf_works()?;
    let started = Instant::now();
    let total = o.conns.len() * o.models.len() * 2 * o.runs.reps;
    let mut runs = Vec::new();
    for (i, &conns) in o.conns.iter().enumerate() {
        for rep in 0..o.runs.reps {
            let mut order = o.models.clone();
            let turn = (i + rep) % order.len();
            order.rotate_left(turn);
            for model in order {
                for rate in [None, Some(o.rate)] {
                    let r = run(o, model, conns, rate, rep)?;
                    eprintln!(
                        "models: [{}/{total}, {:.0} s] {model} at {conns} conns, {}: {}",
                        runs.len() + 1,
                        started.elapsed().as_secs_f64(),
                        rate.map_or("closed loop".into(), |r| format!("{r} req/s")),
                        match &r.outcome {
                            Outcome::Measured(m) => format!(
                                "{:.0} req/s, p99 {:.0} us, {:.2} us/req, {:.2} syscalls/req",
                                m.rps, m.p99_us, m.cpu_us_per_req, m.syscalls_per_req
                            ),
                            Outcome::Cannot { cannot } => format!("cannot: {cannot}"),
                        }
                    );
                    runs.push(r);
                }
            }
        }
    }
    write_results(o, &runs, started.elapsed().as_secs_f64())
}

/// `--replot`: the plot of a recorded result, written beside it.
fn replot(file: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let runs = json["runs"].as_array().ok_or("no runs")?;
    let models: Vec<Model> = Model::ALL
        .into_iter()
        .filter(|m| runs.iter().any(|r| r["model"] == m.name()))
        .collect();
    let mut conns: Vec<u64> = runs.iter().filter_map(|r| r["conns"].as_u64()).collect();
    conns.sort_unstable();
    conns.dedup();
    let svg = file.with_extension("svg");
    std::fs::write(&svg, plot(&models, &conns, &json["runs"])?)
        .map_err(|e| format!("{}: {e}", svg.display()))?;
    eprintln!("models: wrote {}", svg.display());
    Ok(())
}

/// perf must be able to count the server's events.
fn perf_works() -> Result<(), String> {
    let out = Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            "task-clock,raw_syscalls:sys_enter",
            "true",
        ])
        .output()
        .map_err(|e| format!("perf not found ({e}): apt-get install linux-perf"))?;
    if !out.status.success() {
        return Err(format!(
            "perf stat cannot count here (root, or kernel.perf_event_paranoid <= 1, and \
             tracefs for raw_syscalls): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn run(o: &Opts, model: Model, conns: u64, rate: Option<u64>, rep: usize) -> Result<Run, String> {
    let at = |outcome| Run {
        model: model.name(),
        conns,
        rate_rps: rate,
        rep,
        outcome,
    };
    let ports = common::free_ports(conns.div_ceil(CONNS_PER_PORT) as usize);
    let stats = std::env::temp_dir().join(format!("c1m-models-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&stats);
    let max = conns.to_string();
    let mut args = vec![
        "--model",
        model.name(),
        "--host",
        "127.0.0.1",
        "--ports",
        &ports,
        "--stats-json",
        stats.to_str().unwrap(),
    ];
    // The iterative server holds one connection; it runs anyway, to show the others wait.
    if model != Model::Iterative {
        args.extend(["--max-conns", &max]);
    }
    let srv = match common::Proc::try_server_on(
        o.cpus.server_cpus.as_str(),
        env!("CARGO_BIN_EXE_model-server"),
        &args,
    ) {
        Ok(p) => p,
        Err(e) => {
            return match e.lines().find(|l| l.contains("holds at most")) {
                Some(line) => Ok(at(Outcome::Cannot {
                    cannot: line.trim_start_matches("model-server: error: ").to_string(),
                })),
                None => Err(format!("{model} at {conns}: {e}")),
            };
        }
    };
    let pid = srv.child.id();
    let plan = srv
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix("model-server: model "))
        .map(|l| format!("model {l}"))
        .unwrap_or_default();
    let base = Snapshot::take(pid);
    let perf = Perf::attach(pid)?;
    let sampler = Sampler::start(pid);
    let spawned = Instant::now();
    let load = uring_load(o, &ports, conns, rate);
    let samples = sampler.stop();
    let perf = perf.stop()?;
    let summary = stop(srv, &stats, model);
    let l = load?;
    let summary = summary?;
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| format!("uring-load json: no {what}"))
    };
    let (ramp, duration) = (
        num(&l["ramp_s"], "ramp_s")?,
        num(&l["duration_s"], "duration_s")?,
    );
    let from = perf.0;
    let window = (
        spawned + Duration::from_secs_f64(ramp + o.runs.warmup),
        spawned + Duration::from_secs_f64(ramp + o.runs.warmup + duration),
    );
    let counts = perf_in(&perf.1, from, window);
    let requests = l["requests"].as_u64().unwrap_or(0);
    let per_sec = requests as f64 / duration.max(1e-9);
    let span = (window.1 - window.0).as_secs_f64().max(1e-9);
    let per_req = |n: f64| n / span / per_sec.max(1e-9);
    let mid = window.0 + (window.1 - window.0) / 2;
    let peak = samples.iter().fold(Snapshot::default(), |a, s| Snapshot {
        threads: a.threads.max(s.1.threads),
        processes: a.processes.max(s.1.processes),
        ..a
    });
    let at_mid = samples
        .iter()
        .min_by_key(|s| if s.0 > mid { s.0 - mid } else { mid - s.0 })
        .map(|s| s.1)
        .unwrap_or(base);
    let served = summary["totals"]["bytes_out"].as_u64().unwrap_or(0) / SIZE;
    let own = summary["totals"]["syscalls"].as_u64().unwrap_or(0);
    Ok(at(Outcome::Measured(Box::new(Measured {
        rps: num(&l["throughput_rps"], "throughput_rps")?,
        requests,
        p50_us: num(&l["latency_us"]["p50"], "latency_us.p50")?,
        p99_us: num(&l["latency_us"]["p99"], "latency_us.p99")?,
        latency_us: l["latency_us"].clone(),
        conns_established: l["conns_established"].as_u64().unwrap_or(0),
        errors: l["errors"].clone(),
        cpu_us_per_req: per_req(counts.task_clock_ms * 1e3),
        syscalls_per_req: per_req(counts.syscalls),
        own_syscalls_per_req: own as f64 / served.max(1) as f64,
        ctx_switches_per_req: per_req(counts.ctx_switches),
        pss_bytes_per_conn: at_mid.pss_kib.saturating_sub(base.pss_kib) as f64 * 1024.0
            / conns as f64,
        kernel_bytes_per_conn: at_mid.slab_kib.saturating_sub(base.slab_kib) as f64 * 1024.0
            / conns as f64,
        threads: peak
            .threads
            .max(summary["threads_max"].as_u64().unwrap_or(0)),
        processes: peak
            .processes
            .max(summary["processes_max"].as_u64().unwrap_or(0)),
        plan,
    }))))
}

/// Stops the server (SIGTERM, bounded) and reads its summary.
fn stop(srv: common::Proc, stats: &std::path::Path, model: Model) -> Result<Value, String> {
    let said = srv.stderr();
    let pid = srv.child.id();
    let st = srv.stop_within(Duration::from_secs(20));
    let st = st.map_err(|e| {
        // A server that had to be killed may leave children (fork's): by their PIDs.
        for p in common::family(pid) {
            let _ = c1m::sys::kill(p, libc::SIGKILL);
        }
        format!("{model}: {e}; its stderr:\n{said}")
    })?;
    if !st.success() {
        return Err(format!("{model} exited {st}; its stderr:\n{said}"));
    }
    let text = std::fs::read_to_string(stats).map_err(|e| format!("{model}: summary: {e}"))?;
    let _ = std::fs::remove_file(stats);
    serde_json::from_str(&text).map_err(|e| format!("{model} summary: {e}"))
}

/// What the server's process tree holds at one moment.
#[derive(Default, Clone, Copy, Debug)]
struct Snapshot {
    /// Proportional set size of the tree, KiB.
    pss_kib: u64,
    threads: u64,
    processes: u64,
    /// The host's unreclaimable slab memory, KiB (/proc/meminfo SUnreclaim): where the
    /// kernel keeps sockets, their epoll items and files.
    slab_kib: u64,
}

impl Snapshot {
    fn take(pid: u32) -> Snapshot {
        let family = common::family(pid);
        Snapshot {
            pss_kib: pss_kib(&family),
            threads: common::status_sum(&family, "Threads:", false),
            processes: family.len() as u64,
            slab_kib: slab_kib(),
        }
    }
}

/// The proportional set size of `pids`, summed (/proc/PID/smaps_rollup): each page shared
/// by n of them counts 1/n to each, so fork's children, which share their parent's pages
/// copy-on-write, are not counted n times over as their VmRSS would be.
fn pss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn slab_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SUnreclaim:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The server's tree, sampled every SAMPLE_MS until stopped.
struct Sampler {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Snapshot)>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    samples.push((Instant::now(), Snapshot::take(pid)));
                    std::thread::sleep(Duration::from_millis(SAMPLE_MS));
                }
                samples
            })
        };
        Sampler { done, thread }
    }

    fn stop(self) -> Vec<(Instant, Snapshot)> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// `perf stat -I` on the server, every thread and child it starts included.
struct Perf {
    child: std::process::Child,
    started: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    reader: JoinHandle<()>,
}

/// One interval's counts: its end (seconds since perf started), task-clock ms, system calls,
/// context switches.
type Interval = (f64, [f64; 3]);

impl Perf {
    fn attach(pid: u32) -> Result<Perf, String> {
        let mut child = Command::new("perf")
            .args(["stat", "-x,", "-I", &SAMPLE_MS.to_string()])
            .args(["-e", "task-clock,raw_syscalls:sys_enter,context-switches"])
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        let started = Instant::now();
        let err = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            })
        };
        // perf attaches within a few ms; its first interval marks it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while lines.lock().unwrap().is_empty() {
            if Instant::now() > deadline {
                return Err("perf stat printed nothing within 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Perf {
            child,
            started,
            lines,
            reader,
        })
    }

    /// Its start and its intervals.
    fn stop(mut self) -> Result<(Instant, Vec<Interval>), String> {
        let _ = c1m::sys::kill(self.child.id(), libc::SIGINT);
        common::wait_bounded(&mut self.child, Duration::from_secs(5), "perf")?;
        let _ = self.reader.join();
        let mut by_time: Vec<Interval> = Vec::new();
        for l in self.lines.lock().unwrap().iter() {
            // time,count,unit,event,...
            let f: Vec<&str> = l.split(',').collect();
            let (Some(t), Some(n), Some(ev)) = (
                f.first().and_then(|t| t.trim().parse::<f64>().ok()),
                f.get(1).and_then(|n| n.trim().parse::<f64>().ok()),
                f.get(3),
            ) else {
                continue;
            };
            let k = match *ev {
                e if e.starts_with("task-clock") => 0,
                e if e.starts_with("raw_syscalls") => 1,
                e if e.starts_with("context-switches") => 2,
                _ => continue,
            };
            match by_time.last_mut() {
                Some(last) if (last.0 - t).abs() < 1e-6 => last.1[k] = n,
                _ => {
                    let mut v = [0.0; 3];
                    v[k] = n;
                    by_time.push((t, v));
                }
            }
        }
        Ok((self.started, by_time))
    }
}

struct Counts {
    task_clock_ms: f64,
    syscalls: f64,
    ctx_switches: f64,
}

/// The counts of the intervals that end inside `window` (perf started at `from`).
fn perf_in(intervals: &[Interval], from: Instant, window: (Instant, Instant)) -> Counts {
    let (a, b) = (
        window.0.saturating_duration_since(from).as_secs_f64(),
        window.1.saturating_duration_since(from).as_secs_f64(),
    );
    let inside = intervals
        .iter()
        .filter(|i| i.0 > a + SAMPLE_MS as f64 / 1e3 && i.0 <= b);
    let mut sum = [0.0; 3];
    let mut n = 0usize;
    for i in inside {
        for (s, v) in sum.iter_mut().zip(i.1) {
            *s += v;
        }
        n += 1;
    }
    // The counts cover n intervals; scale them to the window for the per-second figures.
    let covered = n as f64 * SAMPLE_MS as f64 / 1e3;
    let scale = if covered > 0.0 {
        (b - a) / covered
    } else {
        0.0
    };
    Counts {
        task_clock_ms: sum[0] * scale,
        syscalls: sum[1] * scale,
        ctx_switches: sum[2] * scale,
    }
}

/// uring-load against `ports`, closed loop or at `rate`: its JSON report.
fn uring_load(o: &Opts, ports: &str, conns: u64, rate: Option<u64>) -> Result<Value, String> {
    let json = std::env::temp_dir().join(format!("c1m-models-load-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        o.cpus.load_cpus.as_str(),
        env!("CARGO_BIN_EXE_uring-load"),
    ])
    .args(["--host", "127.0.0.1", "--ports", ports])
    .args(["--conns", &conns.to_string(), "--size", &SIZE.to_string()])
    .args(["--cores", &o.cpus.load_cpus.count().to_string()])
    .args(["--duration", &o.runs.duration.to_string()])
    .args(["--warmup", &o.runs.warmup.to_string()])
    .args(["--quiet", "--allow-partial", "--json"])
    .arg(&json)
    .stdout(Stdio::null());
    if let Some(r) = rate {
        cmd.args(["--rate", &r.to_string()]);
    }
    let limit = Duration::from_secs_f64(o.runs.warmup + o.runs.duration + 120.0);
    let (st, stderr) = common::run_bounded(&mut cmd, limit, "uring-load")?;
    let text = std::fs::read_to_string(&json)
        .map_err(|e| format!("uring-load ({st}) wrote no report ({e}): {stderr}"))?;
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).map_err(|e| format!("uring-load json: {e}"))
}

fn write_results(o: &Opts, runs: &[Run], secs: f64) -> Result<(), String> {
    let cmd = if o.argv.is_empty() {
        "cargo bench --bench models".to_string()
    } else {
        format!("cargo bench --bench models -- {}", o.argv)
    };
    let (date, kernel, commit) = (common::today(), common::kernel(), common::commit());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Every server model, one table ({date})\n\n- machine: {}, kernel {kernel}, commit \
         {commit}\n- command: `{cmd}` ({secs:.0} s)\n- 64 B echo; `model-server` pinned to CPUs \
         {}, `uring-load` to CPUs {}; {} s measured after {} s of warm-up, {} run(s) per cell; \
         fixed rate {} req/s over all connections\n- CPU, syscalls and context switches: `perf \
         stat` on the server's whole tree over the measured window; \"own\": the model's own \
         count of its system calls over its whole run (glibc's AIO threads not included). \
         Memory per connection: resident (PSS of the server tree) and kernel slab (host, both ends), \
         mid-window, less before the load (noise below 1,000 connections).\n",
        o.machine,
        o.cpus.server_cpus.as_str(),
        o.cpus.load_cpus.as_str(),
        o.runs.duration,
        o.runs.warmup,
        o.runs.reps,
        o.rate,
    );
    for rate in [None, Some(o.rate)] {
        let _ = writeln!(
            md,
            "\n## {}\n\n| model | conns | req/s | p50 us | p99 us | CPU us/req | syscalls/req \
             (own) | ctx sw/req | PSS B/conn | kernel B/conn | threads | procs | note |\n|---|---|\
             ---|---|---|---|---|---|---|---|---|---|---|",
            rate.map_or("Closed loop".to_string(), |r| format!(
                "Fixed rate, {r} req/s"
            ))
        );
        for &model in &o.models {
            for &conns in &o.conns {
                for r in runs
                    .iter()
                    .filter(|r| r.model == model.name() && r.conns == conns && r.rate_rps == rate)
                {
                    let _ = writeln!(md, "{}", row(r));
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\n## Plans\n\nWhat each model said it holds here, and its wall (model-server's plan line \
         at the largest count it ran):\n"
    );
    for &model in &o.models {
        if let Some(plan) = runs.iter().rev().find_map(|r| match &r.outcome {
            Outcome::Measured(m) if r.model == model.name() && !m.plan.is_empty() => {
                Some(m.plan.clone())
            }
            _ => None,
        }) {
            let _ = writeln!(md, "- {plan}");
        }
    }
    let stem = format!("{}/models-{date}-{kernel}-{commit}", o.out);
    let json = json!({
        "date": date, "kernel": kernel, "commit": commit, "machine": o.machine, "command": cmd,
        "seconds": secs, "rate_rps": o.rate, "runs": runs,
    });
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out))?;
    let write = |ext: &str, text: &str| {
        std::fs::write(format!("{stem}.{ext}"), text).map_err(|e| format!("{stem}.{ext}: {e}"))
    };
    write("md", &md)?;
    write(
        "json",
        &(serde_json::to_string_pretty(&json).map_err(|e| e.to_string())? + "\n"),
    )?;
    write("svg", &plot(&o.models, &o.conns, &json["runs"])?)?;
    print!("{md}");
    eprintln!("models: wrote {stem}.md, .json and .svg");
    Ok(())
}

fn row(r: &Run) -> String {
    match &r.outcome {
        Outcome::Cannot { cannot } => format!(
            "| {} | {} | - | - | - | - | - | - | - | - | - | - | cannot: {} |",
            r.model, r.conns, cannot
        ),
        Outcome::Measured(m) => {
            let errors: u64 = m
                .errors
                .as_object()
                .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
            let mut note = Vec::new();
            if m.conns_established < r.conns {
                note.push(format!("{} of {} connected", m.conns_established, r.conns));
            }
            if errors > 0 {
                note.push(format!("errors {}", m.errors));
            }
            format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} ({:.2}) | {:.3} | {:.0} | {:.0} \
                 | {} | {} | {} |",
                r.model,
                r.conns,
                m.rps,
                m.p50_us,
                m.p99_us,
                m.cpu_us_per_req,
                m.syscalls_per_req,
                m.own_syscalls_per_req,
                m.ctx_switches_per_req,
                m.pss_bytes_per_conn,
                m.kernel_bytes_per_conn,
                m.threads,
                m.processes,
                note.join("; ")
            )
        }
    }
}

/// A distinct color for each of the thirteen models.
fn color(i: usize) -> RGBColor {
    const C: [(u8, u8, u8); 13] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
        (0, 0, 0),
        (174, 199, 232),
        (255, 187, 120),
    ];
    let (r, g, b) = C[i % C.len()];
    RGBColor(r, g, b)
}

/// A model's line of a plot: its index (its color), the model, and its points (connections,
/// requests a second, p99 us).
type Line = (usize, Model, Vec<(f64, f64, f64)>);

/// Closed loop: throughput and p99 against connections (log), a line per model through
/// the medians of its runs; from the runs as the JSON file records them.
fn plot(models: &[Model], conns: &[u64], runs: &Value) -> Result<String, String> {
    let runs = runs.as_array().ok_or("no runs to plot")?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(
                "Every server model, closed loop: throughput and p99 against connections",
                ("sans-serif", 22),
            )
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((1, 2));
        let median = |m: Model, c: u64, key: &str| {
            let mut v: Vec<f64> = runs
                .iter()
                .filter(|r| r["model"] == m.name() && r["conns"] == c && r["rate_rps"].is_null())
                .filter_map(|r| r[key].as_f64())
                .collect();
            (!v.is_empty()).then(|| common::median(&mut v))
        };
        let lines: Vec<Line> = models
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                let pts = conns
                    .iter()
                    .filter_map(|&c| {
                        Some((
                            c as f64,
                            median(m, c, "rps")?,
                            median(m, c, "p99_us")?.max(1.0),
                        ))
                    })
                    .collect();
                (i, m, pts)
            })
            .collect();
        let xmax = conns.iter().copied().max().unwrap_or(10) as f64 * 1.5;
        let xmin = conns.iter().copied().min().unwrap_or(10) as f64 / 1.5;
        let rps_max = lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.15;
        let p99_max = lines
            .iter()
            .flat_map(|l| l.2.iter().map(|p| p.2))
            .fold(10.0, f64::max);
        let p99_hi = 10f64.powf(p99_max.log10().ceil());
        panel(
            &panels[0],
            &lines,
            (xmin..xmax).log_scale(),
            0.0..rps_max,
            Panel {
                caption: "throughput",
                y_desc: "requests / s",
                y: |p| p.1,
                legend: None,
            },
        )?;
        // p99 grows with the connections (closed loop: Little's law), so the upper left
        // is free.
        panel(
            &panels[1],
            &lines,
            (xmin..xmax).log_scale(),
            (1.0..p99_hi).log_scale(),
            Panel {
                caption: "p99 latency",
                y_desc: "p99 us (log)",
                y: |p| p.2,
                legend: Some(SeriesLabelPosition::UpperLeft),
            },
        )?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// What one panel shows of the lines, and where its legend goes (none: the other panel's).
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    y: fn(&(f64, f64, f64)) -> f64,
    legend: Option<SeriesLabelPosition>,
}

fn panel<X, Y>(
    area: &DrawingArea<SVGBackend, Shift>,
    lines: &[Line],
    x_range: X,
    y_range: Y,
    Panel {
        caption,
        y_desc,
        y,
        legend,
    }: Panel,
) -> Result<(), String>
where
    X: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    X::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("connections (log)")
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, model, pts) in lines {
        let c = color(*i);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, y(p))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(model.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, y(p)), 3, c.filled())))
            .map_err(err)?;
    }
    if let Some(at) = legend {
        chart
            .configure_series_labels()
            .position(at)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}
