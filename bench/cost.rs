//! The cost curve, server CPU per request and latency against offered load: `cargo bench --bench cost`
//!
//! At each connection count (500 and 5,000; `--full` adds 50,000 and 100,000) every server is
//! driven closed loop to its saturation, then open loop (`uring-load --rate`) at 25, 50, 75 and
//! 90 % of the lowest of those saturations: one rate axis per connection count, so every server
//! carries every point and the points compare like for like. The servers: `uring-server` and
//! `epoll-server` at their default flags (only ports, cores, max-conns and stats-json given),
//! and a peer: for echo a tokio echo server (this bench re-executed with `--serve-tokio`; not
//! run where one process cannot hold the connections), for `--proto http` nginx (a worker per
//! server CPU, more past RLIMIT_NOFILE; `return 200`). One server at a time runs
//! pinned to the server CPUs, driven by `uring-load` pinned to the load CPUs; every run starts
//! a fresh server and the servers take turns, the order rotating every group of runs.
//!
//! How each number is taken:
//! - CPU per request: the server's user+sys (/proc/PID/stat of it and the processes it
//!   started), sampled every 20 ms and read at the edges of `uring-load`'s measured window,
//!   over the requests answered in that window per second. The window's start is known from
//!   outside only to ~50 ms (uring-load notes its ramp's end at that pace), so 0.1 s is left
//!   out at each edge: the rate inside is steady, open loop or closed.
//! - p50, p99: uring-load's, from each request's due time (open loop: corrected for
//!   coordinated omission; closed loop: from when it was issued).
//! - syscalls per request: our servers' own count (`--stats-json` totals.syscalls) over their
//!   whole run per request they served; the peers have no such count.
//! - busy: the server CPUs' time not idle (/proc/stat, exact under NO_HZ) over the same span;
//!   what of it the server was not charged for is listed per run past 10 % of a CPU, since
//!   this machine is shared and other work there is noise in every figure.
//!
//! Writes bench/results/cost-<date>-<kernel>.md, .json (every run as measured) and .svg (CPU
//! per request and p99 against load), `cost-http-...` with `--proto http`. Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c1m::cli::{PortList, Proto};
use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "cost",
    override_usage = "cargo bench --bench cost [-- OPTIONS]",
    about = "Server CPU per request, p50 and p99 against offered load: both engines and a peer"
)]
struct Flags {
    /// Adds 50,000 and 100,000 connections (where --conns is not given)
    #[arg(long)]
    full: bool,
    /// Connection counts [default: 500,5000]
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..))]
    conns: Option<Vec<u64>>,
    /// Open-loop loads in % of the lowest saturation at each connection count
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "25,50,75,90",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    loads: Vec<u32>,
    /// The protocol: echo (peer: tokio) or http (peer: nginx)
    #[arg(long, value_enum, default_value_t = Proto::Echo)]
    proto: Proto,
    /// Internal: serve echo with tokio on these ports (the peer this bench runs)
    #[arg(long, hide = true, value_name = "PORTS")]
    serve_tokio: Option<PortList>,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
}

/// The flags with `--full` and the defaults applied.
struct Opts {
    conns: Vec<u64>,
    loads: Vec<u32>,
    proto: Proto,
    runs: common::Runs,
    cpus: common::Cpus,
    out: String,
    argv: String,
    /// The machine, read before this process pins itself to one CPU.
    machine: String,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Server {
    Uring,
    Epoll,
    Tokio,
    Nginx,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Uring => "uring",
            Server::Epoll => "epoll",
            Server::Tokio => "tokio",
            Server::Nginx => "nginx",
        }
    }

    /// The servers compared under `proto`, ours first.
    fn all(proto: Proto) -> [Server; 3] {
        match proto {
            Proto::Echo => [Server::Uring, Server::Epoll, Server::Tokio],
            Proto::Http => [Server::Uring, Server::Epoll, Server::Nginx],
            Proto::Redis => unreachable!("--proto redis is refused in main"),
        }
    }

    fn color(self) -> RGBColor {
        match self {
            Server::Uring => RGBColor(31, 119, 180),
            Server::Epoll => RGBColor(214, 39, 40),
            Server::Tokio => RGBColor(44, 160, 44),
            Server::Nginx => RGBColor(255, 127, 14),
        }
    }
}

/// Other processes' CPU on the server's CPUs (% of a CPU) past which a run is listed as shared.
const SHARED_PCT: f64 = 10.0;

/// Connections per server port: the kernel's search for a free ephemeral port to one
/// destination slows as that destination's share of ip_local_port_range fills (measured
/// here: 20,000 connections to one port take 5 s to connect, over 8 ports 0.5 s).
const CONNS_PER_PORT: u64 = 2_500;

fn main() {
    // Runs of 3 s after 1 s of warm-up, once each: the default run fits in 5 minutes.
    let (f, args) = common::parse::<Flags>(|c| {
        c.mut_arg("duration", |a| a.default_value("3"))
            .mut_arg("reps", |a| a.default_value("1"))
    });
    if let Some(ports) = &f.serve_tokio {
        serve_tokio(ports);
    }
    // The cost curve is echo's and HTTP's; Redis has a bench of its own, with Redis itself
    // as the peer (`cargo bench --bench redis`). The `unreachable!` arms below rest on this.
    if f.proto == Proto::Redis {
        eprintln!("cost: --proto is echo or http here; Redis: cargo bench --bench redis");
        std::process::exit(2);
    }
    let o = Opts {
        conns: f.conns.unwrap_or_else(|| {
            if f.full {
                vec![500, 5000, 50_000, 100_000]
            } else {
                vec![500, 5000]
            }
        }),
        loads: f.loads,
        proto: f.proto,
        runs: f.runs,
        cpus: f.cpus,
        out: f.output.out,
        argv: args.join(" "),
        machine: common::machine(),
    };
    // The bench's own threads (the CPU sampler, the pipe readers) stay off the server's CPUs.
    if let Err(e) = c1m::sys::pin_current_thread(o.cpus.load_cpus.cpus()[0]) {
        eprintln!("cost: pinning to CPU {}: {e}", o.cpus.load_cpus.cpus()[0]);
        std::process::exit(1);
    }
    let result = bench(&o);
    let _ = std::fs::remove_dir_all(nginx_dir());
    if let Err(e) = result {
        eprintln!("cost: {e}");
        std::process::exit(1);
    }
}

/// Every run, in turn; then the results.
fn bench(o: &Opts) -> Result<(), String> {
    if o.proto == Proto::Http && version("nginx", "-v").is_empty() {
        return Err("nginx not found (apt-get install -y nginx-light)".into());
    }
    let started = Instant::now();
    let nofile = c1m::sys::limits::HostLimits::read()
        .map_err(|e| format!("reading the host's limits: {e}"))?
        .nofile_hard;
    let mut skipped = Vec::new();
    let servers_at = |conns: u64| -> Vec<Server> {
        Server::all(o.proto)
            .into_iter()
            .filter(|s| cannot_hold(*s, conns, nofile).is_none())
            .collect()
    };
    let total: usize = o
        .conns
        .iter()
        .map(|c| servers_at(*c).len() * (1 + o.loads.len()) * o.runs.reps)
        .sum();
    let mut runs: Vec<Run> = Vec::new();
    let mut axes = Vec::new();
    let mut group = 0;
    let mut each = |runs: &mut Vec<Run>, conns: u64, load: Option<(u32, f64)>| {
        let servers = servers_at(conns);
        for rep in 0..o.runs.reps {
            let mut order = servers.clone();
            order.rotate_left(group % servers.len());
            group += 1;
            for kind in order {
                let r = run(o, kind, conns, load, rep)?;
                eprintln!(
                    "cost: [{}/{total}, {:.0} s] {conns} conns, {}, {}: {:.0} req/s, {:.2} us/req, p50 {:.0} us, p99 {:.0} us, busy {:.0} %, others {:.0} %{}",
                    runs.len() + 1,
                    started.elapsed().as_secs_f64(),
                    kind.name(),
                    load.map_or("closed loop".into(), |(p, r)| format!(
                        "{p} % ({r:.0} req/s)"
                    )),
                    r.rps,
                    r.cpu_us_per_req,
                    r.p50_us,
                    r.p99_us,
                    r.busy_pct,
                    r.others_pct,
                    r.trouble().map_or(String::new(), |t| format!(" ({t})"))
                );
                runs.push(r);
            }
        }
        Ok::<_, String>(())
    };
    for &conns in &o.conns {
        for s in Server::all(o.proto) {
            if let Some(why) = cannot_hold(s, conns, nofile) {
                eprintln!("cost: {conns} conns: {} not run: {why}", s.name());
                skipped.push(json!({ "conns": conns, "server": s.name(), "why": why }));
            }
        }
        each(&mut runs, conns, None)?;
        let (axis, of) = servers_at(conns)
            .iter()
            .map(|s| (median_of(&runs, conns, *s, None, |r| r.rps), *s))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap();
        axes.push(json!({ "conns": conns, "rps": axis, "of": of.name() }));
        for &pct in &o.loads {
            each(&mut runs, conns, Some((pct, axis * f64::from(pct) / 100.0)))?;
        }
    }
    write_results(o, &runs, &axes, &skipped, started.elapsed().as_secs_f64())
}

/// Why `kind` cannot hold `conns` connections on this host, if it cannot: the tokio peer is
/// one process with a descriptor per connection, under RLIMIT_NOFILE's hard limit `nofile`
/// (ours plan rings or workers past it, nginx adds workers).
fn cannot_hold(kind: Server, conns: u64, nofile: u64) -> Option<String> {
    // Listeners, the runtime's own descriptors, stdio.
    const SPARE: u64 = 1024;
    (kind == Server::Tokio && conns + SPARE > nofile).then(|| {
        format!(
            "one process with a descriptor per connection, and RLIMIT_NOFILE's hard limit here is \
             {nofile} (raising it needs CAP_SYS_RESOURCE)"
        )
    })
}

/// What one run measured.
#[derive(Serialize, Clone)]
struct Run {
    conns: u64,
    server: &'static str,
    /// The open-loop load in % of the rate axis; none: closed loop (saturation).
    load_pct: Option<u32>,
    /// The rate asked for (open loop).
    rate_rps: Option<f64>,
    rep: usize,
    rps: f64,
    /// Requests answered in the measured window.
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    /// uring-load's latency percentiles as it reported them.
    latency_us: Value,
    /// The span the server's CPU was read over (the window less its edges).
    cpu_span_s: f64,
    cpu_user_us_per_req: f64,
    cpu_sys_us_per_req: f64,
    cpu_us_per_req: f64,
    /// How busy the server's CPUs were over the span, whoever for, per wall second (100 = one
    /// CPU).
    busy_pct: f64,
    /// Of that, what the server was not charged for: other processes (this machine is
    /// shared), and interrupts that came while the server slept.
    others_pct: f64,
    /// Ours only: its system calls over its whole run per request it served.
    syscalls_per_req: Option<f64>,
    conns_established: u64,
    /// uring-load's errors by kind.
    errors: Value,
    ramp_s: f64,
}

impl Run {
    /// What went wrong in the run, if anything: errors, connections not established.
    fn trouble(&self) -> Option<String> {
        let errors: u64 = self
            .errors
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        let short = self.conns - self.conns_established.min(self.conns);
        match (errors, short) {
            (0, 0) => None,
            (0, s) => Some(format!("{s} connections not established")),
            (_, s) => Some(format!(
                "{s} connections not established, errors {}",
                self.errors
            )),
        }
    }
}

/// One run: a fresh server, uring-load against it, the server stopped (also when the load
/// failed).
fn run(
    o: &Opts,
    kind: Server,
    conns: u64,
    load: Option<(u32, f64)>,
    rep: usize,
) -> Result<Run, String> {
    let ports = common::free_ports(conns.div_ceil(CONNS_PER_PORT) as usize);
    let srv = Serving::start(o, kind, conns, &ports)?;
    let sampler = Sampler::start(srv.pids.clone(), o.cpus.server_cpus.cpus().to_vec());
    let spawned = Instant::now();
    let measured = uring_load(o, &ports, conns, load.map(|l| l.1));
    let samples = sampler.stop();
    let served = srv.stop();
    let l = measured?;
    let syscalls_per_req = served?;
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| format!("uring-load json: no {what}"))
    };
    let (ramp, duration) = (
        num(&l["ramp_s"], "ramp_s")?,
        num(&l["duration_s"], "duration_s")?,
    );
    let requests = l["requests"].as_u64().unwrap_or(0);
    let edge = (duration / 5.0).min(0.1);
    let from = spawned + Duration::from_secs_f64(ramp + o.runs.warmup + edge);
    let until = from + Duration::from_secs_f64((duration - 2.0 * edge).max(0.0));
    let span = (until - from).as_secs_f64().max(1e-9);
    let [u0, s0, idle0] = cpu_at(&samples, from);
    let [u1, s1, idle1] = cpu_at(&samples, until);
    let cpus = o.cpus.server_cpus.count() as f64;
    let busy = (cpus - (idle1 - idle0) / span) * 100.0;
    let per_sec = requests as f64 / duration.max(1e-9);
    let per_req = |cpu: f64| cpu / span / per_sec.max(1e-9) * 1e6;
    Ok(Run {
        conns,
        server: kind.name(),
        load_pct: load.map(|l| l.0),
        rate_rps: load.map(|l| l.1.round()),
        rep,
        rps: num(&l["throughput_rps"], "throughput_rps")?,
        requests,
        p50_us: num(&l["latency_us"]["p50"], "latency_us.p50")?,
        p99_us: num(&l["latency_us"]["p99"], "latency_us.p99")?,
        latency_us: l["latency_us"].clone(),
        cpu_span_s: span,
        cpu_user_us_per_req: per_req(u1 - u0),
        cpu_sys_us_per_req: per_req(s1 - s0),
        cpu_us_per_req: per_req(u1 - u0 + s1 - s0),
        busy_pct: busy,
        others_pct: (busy - (u1 - u0 + s1 - s0) / span * 100.0).max(0.0),
        syscalls_per_req,
        conns_established: l["conns_established"].as_u64().unwrap_or(0),
        errors: l["errors"].clone(),
        ramp_s: ramp,
    })
}

/// A server started for one run.
struct Serving {
    kind: Server,
    process: Process,
    /// The processes whose CPU counts: the server and those it started (the Reactor's
    /// workers, nginx's workers).
    pids: Vec<u32>,
    /// Ours: their `--stats-json` file.
    stats: Option<PathBuf>,
    /// Echo: bytes per request, to count the requests ours served from their bytes out.
    size: Option<u64>,
    stopped: bool,
}

enum Process {
    Spawned(common::Proc),
    Nginx(Child),
}

fn nginx_dir() -> PathBuf {
    std::env::temp_dir().join(format!("c1m-cost-nginx-{}", std::process::id()))
}

impl Serving {
    fn start(o: &Opts, kind: Server, conns: u64, ports: &str) -> Result<Serving, String> {
        let cpus = o.cpus.server_cpus.as_str();
        let (process, stats) = match kind {
            Server::Uring | Server::Epoll => {
                let bin = if kind == Server::Uring {
                    env!("CARGO_BIN_EXE_uring-server")
                } else {
                    env!("CARGO_BIN_EXE_epoll-server")
                };
                let stats = std::env::temp_dir()
                    .join(format!("c1m-cost-stats-{}.json", std::process::id()));
                let _ = std::fs::remove_file(&stats);
                // Room for every connection, as the other benches give.
                let max_conns = (conns + conns / 4).max(1000).to_string();
                let proto = match o.proto {
                    Proto::Echo => "echo",
                    Proto::Http => "http",
                    Proto::Redis => unreachable!("--proto redis is refused in main"),
                };
                let p = common::Proc::try_server_on(
                    cpus,
                    bin,
                    &[
                        "--proto",
                        proto,
                        "--host",
                        "127.0.0.1",
                        "--ports",
                        ports,
                        "--cores",
                        &o.cpus.server_cpus.count().to_string(),
                        "--max-conns",
                        &max_conns,
                        "--stats-json",
                        stats.to_str().unwrap(),
                    ],
                )?;
                (Process::Spawned(p), Some(stats))
            }
            Server::Tokio => {
                let me = std::env::current_exe().map_err(|e| format!("this bench's path: {e}"))?;
                let p = common::Proc::try_server_on(
                    cpus,
                    me.to_str().unwrap(),
                    &["--serve-tokio", ports],
                )?;
                (Process::Spawned(p), None)
            }
            Server::Nginx => {
                let ports: PortList = ports.parse()?;
                let (child, _) =
                    common::start_nginx(&o.cpus.server_cpus, &nginx_dir(), ports.ports(), conns)?;
                (Process::Nginx(child), None)
            }
        };
        let pid = match &process {
            Process::Spawned(p) => p.child.id(),
            Process::Nginx(c) => c.id(),
        };
        Ok(Serving {
            kind,
            process,
            pids: common::family(pid),
            stats,
            size: (o.proto == Proto::Echo).then_some(64),
            stopped: false,
        })
    }

    fn child(&mut self) -> &mut Child {
        match &mut self.process {
            Process::Spawned(p) => &mut p.child,
            Process::Nginx(c) => c,
        }
    }

    /// What the server said: its stderr (nginx: its error log).
    fn said(&self) -> String {
        match &self.process {
            Process::Spawned(p) => p.stderr(),
            Process::Nginx(_) => {
                std::fs::read_to_string(nginx_dir().join("error.log")).unwrap_or_default()
            }
        }
    }

    /// Stops the server (SIGTERM: ours drain for --shutdown-timeout, 5 s by default; tokio
    /// dies of it; nginx shuts down fast); ours: returns its syscalls per request served.
    fn stop(mut self) -> Result<Option<f64>, String> {
        self.stopped = true;
        let name = self.kind.name();
        // By PID: a child not reaped yet.
        let _ = c1m::sys::kill(self.child().id(), libc::SIGTERM);
        let st = common::wait_bounded(self.child(), Duration::from_secs(15), name);
        // The Reactor's master and nginx's wait for their workers before they exit; one that
        // had to be killed leaves them, and they go by their PIDs.
        if st.is_err() {
            for &p in &self.pids[1..] {
                let _ = c1m::sys::kill(p, libc::SIGKILL);
            }
        }
        let st = st?;
        let Some(stats) = &self.stats else {
            return Ok(None);
        };
        if !st.success() {
            return Err(format!("{name} exited {st}; its stderr:\n{}", self.said()));
        }
        let text = std::fs::read_to_string(stats).map_err(|e| {
            format!(
                "{name}: {}: {e}; its stderr:\n{}",
                stats.display(),
                self.said()
            )
        })?;
        let _ = std::fs::remove_file(stats);
        let s: Value = serde_json::from_str(&text).map_err(|e| format!("{name} stats: {e}"))?;
        let t = &s["totals"];
        let served = match self.size {
            Some(size) => t["bytes_out"].as_u64().unwrap_or(0) / size,
            None => t["requests"].as_u64().unwrap_or(0),
        };
        let syscalls = t["syscalls"]
            .as_u64()
            .ok_or_else(|| format!("{name} --stats-json has no totals.syscalls"))?;
        Ok(Some(syscalls as f64 / served.max(1) as f64))
    }
}

impl Drop for Serving {
    /// A run that failed part-way still leaves no server behind.
    fn drop(&mut self) {
        if !self.stopped {
            for &p in self.pids.iter().rev() {
                let _ = c1m::sys::kill(p, libc::SIGKILL);
            }
            let _ = self.child().wait();
        }
    }
}

/// One reading: when, and CPU seconds: the server's user and sys, and its CPUs' idle time.
type Sample = (Instant, [f64; 3]);

/// The server's CPU and its CPUs' idle time, sampled with the time of each sample.
struct Sampler {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

/// How often the server's CPU is read: /proc counts it in 10 ms ticks.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

impl Sampler {
    fn start(pids: Vec<u32>, cpus: Vec<usize>) -> Sampler {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                loop {
                    let (u, s) = common::cpu_of_all(&pids);
                    samples.push((Instant::now(), [u, s, common::cpus_idle(&cpus)]));
                    if done.load(Ordering::Relaxed) {
                        return samples;
                    }
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        Sampler { done, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The readings at `t`, interpolated between the samples around it.
fn cpu_at(samples: &[Sample], t: Instant) -> [f64; 3] {
    let i = samples.partition_point(|s| s.0 <= t);
    match (
        i.checked_sub(1).map(|j| samples[j]),
        samples.get(i).copied(),
    ) {
        (Some(a), Some(b)) => {
            let k = (t - a.0).as_secs_f64() / (b.0 - a.0).as_secs_f64().max(1e-9);
            std::array::from_fn(|j| a.1[j] + (b.1[j] - a.1[j]) * k)
        }
        (Some(a), None) | (None, Some(a)) => a.1,
        (None, None) => [0.0; 3],
    }
}

/// uring-load against `ports`, closed loop or at `rate`: its JSON report.
fn uring_load(o: &Opts, ports: &str, conns: u64, rate: Option<f64>) -> Result<Value, String> {
    let json = std::env::temp_dir().join(format!("c1m-cost-load-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        o.cpus.load_cpus.as_str(),
        env!("CARGO_BIN_EXE_uring-load"),
    ])
    .args(["--host", "127.0.0.1", "--ports", ports])
    .args(["--conns", &conns.to_string()])
    .args(["--cores", &o.cpus.load_cpus.count().to_string()])
    .args(["--duration", &o.runs.duration.to_string()])
    .args(["--warmup", &o.runs.warmup.to_string()])
    .args(["--quiet", "--allow-partial", "--json"])
    .arg(&json)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if o.proto == Proto::Http {
        cmd.args(["--proto", "http"]);
    }
    if let Some(r) = rate {
        cmd.args(["--rate", &format!("{r:.0}")]);
    }
    // Room for connecting 100,000 and for the closing.
    let limit = Duration::from_secs_f64(o.runs.warmup + o.runs.duration + 120.0);
    let (st, stderr) = common::run_bounded(&mut cmd, limit, "uring-load")?;
    if !st.success() {
        return Err(format!("uring-load failed ({st}): {stderr}"));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).map_err(|e| format!("uring-load json: {e}"))
}

/// The tokio peer, the textbook way: a current-thread runtime per CPU this process may use
/// (each thread pinned to its CPU, as our shards are), each with its own listener on every
/// port (SO_REUSEPORT: the kernel spreads the connections, as with our shards), an accept
/// loop per listener and a task per connection that reads into a 4 KiB buffer and writes it
/// all back. Prints the "listening on" line the bench waits for, then serves until killed.
fn serve_tokio(ports: &PortList) -> ! {
    let fail = |e: String| -> ! {
        eprintln!("tokio peer: {e}");
        std::process::exit(1)
    };
    // A descriptor per connection: up to the hard limit, as any server raises it.
    c1m::sys::limits::raise_nofile().unwrap_or_else(|e| fail(format!("RLIMIT_NOFILE: {e}")));
    let cpus = c1m::sys::allowed_cpus().unwrap_or_else(|e| fail(format!("sched_getaffinity: {e}")));
    let (ready, up) = std::sync::mpsc::channel();
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| {
            let (ports, ready) = (ports.ports().to_vec(), ready.clone());
            std::thread::spawn(move || tokio_runtime(cpu, &ports, ready))
        })
        .collect();
    drop(ready);
    for _ in &cpus {
        match up.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => fail(e),
            Err(_) => fail("a runtime thread ended before it was up".into()),
        }
    }
    println!(
        "listening on 127.0.0.1:{ports} ({} ports), {} tokio current-thread runtimes on cores {cpus:?}",
        ports.len(),
        cpus.len()
    );
    for t in threads {
        let _ = t.join();
    }
    fail("a runtime ended".into())
}

fn tokio_runtime(cpu: usize, ports: &[u16], ready: std::sync::mpsc::Sender<Result<(), String>>) {
    let setup = || -> std::io::Result<_> {
        c1m::sys::pin_current_thread(cpu)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let listeners = {
            let _in = rt.enter();
            ports
                .iter()
                .map(|&p| tokio_listener(p))
                .collect::<std::io::Result<Vec<_>>>()?
        };
        Ok((rt, listeners))
    };
    let (rt, listeners) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(format!("runtime on CPU {cpu}: {e}")));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    rt.block_on(async {
        let loops: Vec<_> = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(l)))
            .collect();
        for l in loops {
            let _ = l.await;
        }
    });
}

fn tokio_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.set_reuseport(true)?;
    s.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    // net.core.somaxconn's default; uring-load connects 256 at a time per thread.
    s.listen(4096)
}

async fn accept_loop(listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Our engines set TCP_NODELAY on their listeners: the same wire behaviour.
                let _ = stream.set_nodelay(true);
                tokio::spawn(echo(stream));
            }
            Err(e) => {
                // Out of descriptors or memory: the run shows it as connections not
                // established rather than this loop spinning on the error.
                eprintln!("tokio peer: accept: {e}");
                std::process::exit(1);
            }
        }
    }
}

async fn echo(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The median over the repetitions of one point's `f`.
fn median_of(
    runs: &[Run],
    conns: u64,
    server: Server,
    load: Option<u32>,
    f: impl Fn(&Run) -> f64,
) -> f64 {
    let mut v: Vec<f64> = at(runs, conns, server, load).map(f).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    common::median(&mut v)
}

/// The runs of one point.
fn at(runs: &[Run], conns: u64, server: Server, load: Option<u32>) -> impl Iterator<Item = &Run> {
    runs.iter()
        .filter(move |r| r.conns == conns && r.server == server.name() && r.load_pct == load)
}

/// The medians of one point.
#[derive(Serialize)]
struct Point {
    conns: u64,
    server: &'static str,
    load_pct: Option<u32>,
    rps: f64,
    cpu_us_per_req: f64,
    cpu_user_us_per_req: f64,
    cpu_sys_us_per_req: f64,
    p50_us: f64,
    p99_us: f64,
    busy_pct: f64,
    syscalls_per_req: Option<f64>,
}

fn point(runs: &[Run], conns: u64, server: Server, load: Option<u32>) -> Point {
    let med = |f: fn(&Run) -> f64| median_of(runs, conns, server, load, f);
    let syscalls = med(|r| r.syscalls_per_req.unwrap_or(f64::NAN));
    Point {
        conns,
        server: server.name(),
        load_pct: load,
        rps: med(|r| r.rps),
        cpu_us_per_req: med(|r| r.cpu_us_per_req),
        cpu_user_us_per_req: med(|r| r.cpu_user_us_per_req),
        cpu_sys_us_per_req: med(|r| r.cpu_sys_us_per_req),
        p50_us: med(|r| r.p50_us),
        p99_us: med(|r| r.p99_us),
        busy_pct: med(|r| r.busy_pct),
        syscalls_per_req: (!syscalls.is_nan()).then_some(syscalls),
    }
}

/// The version of a tool (`nginx -v`: "nginx version: nginx/1.22.1"), empty when it is not
/// there.
fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

/// Whether the kernel accounts interrupt time apart (CONFIG_IRQ_TIME_ACCOUNTING), from
/// /proc/config.gz or /boot/config-RELEASE; none when neither is readable.
fn irq_time_accounting() -> Option<bool> {
    let config = Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .or_else(|| std::fs::read_to_string(format!("/boot/config-{}", common::kernel())).ok())?;
    Some(config.lines().any(|l| l == "CONFIG_IRQ_TIME_ACCOUNTING=y"))
}

/// The version of a crate the bench is built with, from Cargo.lock.
fn locked(name: &str) -> String {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{name}\"") {
            if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = ")) {
                return v.trim_matches('"').to_string();
            }
        }
    }
    String::new()
}

fn write_results(
    o: &Opts,
    runs: &[Run],
    axes: &[Value],
    skipped: &[Value],
    secs: f64,
) -> Result<(), String> {
    let cmd = if o.argv.is_empty() {
        "cargo bench --bench cost".to_string()
    } else {
        format!("cargo bench --bench cost -- {}", o.argv)
    };
    let (date, kernel, commit) = (common::today(), common::kernel(), common::commit());
    let servers = Server::all(o.proto);
    let names: Vec<&str> = servers.iter().map(|s| s.name()).collect();
    let short = names
        .iter()
        .map(|n| &n[..1])
        .collect::<Vec<_>>()
        .join(" / ");
    let (proto, peer) = match o.proto {
        Proto::Echo => (
            "echo, 64 B",
            format!(
                "tokio {} echo (this bench re-executed: a current-thread runtime per server CPU; \
                 an accept loop, a task per connection, `read` / `write_all` through a 4 KiB buffer)",
                locked("tokio")
            ),
        ),
        Proto::Http => (
            "HTTP/1.1 `GET /plaintext`",
            format!(
                "{} (a worker per server CPU, more where the connections need them: each holds at \
                 most RLIMIT_NOFILE's; `return 200`, no access log)",
                version("nginx", "-v"),
            ),
        ),
        Proto::Redis => unreachable!("--proto redis is refused in main"),
    };
    let pcts = o
        .loads
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    // Where softirq time goes decides what a process's CPU holds of loopback's receive path.
    let irq = match irq_time_accounting() {
        Some(false) => {
            "softirq work that came while the server ran included: this kernel has no \
                        CONFIG_IRQ_TIME_ACCOUNTING, so it charges that to the running process"
        }
        Some(true) => {
            "softirq work left out: this kernel has CONFIG_IRQ_TIME_ACCOUNTING, so it \
                       charges no process for it"
        }
        None => {
            "softirq work that came while the server ran included unless the kernel has \
                 CONFIG_IRQ_TIME_ACCOUNTING; its config is not readable here"
        }
    };
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Cost curve: server CPU per request and latency against offered load ({proto})\n\n\
         {date} · kernel {kernel} · commit {commit} · {} · {secs:.0} s\n\n`{cmd}`\n\n\
         Servers: `uring-server` and `epoll-server` at their default flags (only `--ports`, `--cores {}`, \
         `--max-conns` and `--stats-json` given) and {peer}; one at a time, pinned to CPUs {}; `uring-load` \
         pinned to CPUs {}. At each connection count every server runs closed loop (a request outstanding \
         per connection) to its saturation (**sat**), then open loop (`--rate`) at {pcts} % of the **lowest** \
         saturation of the three: one rate axis per connection count, so every server carries every point and \
         the points compare like for like. A fresh server per run; the servers take turns, the order rotating \
         every group of runs; {} repetition(s) of {} s measured after {} s of warm-up, medians.\n\n\
         - CPU/req: the server's user+sys (its processes, from /proc) over uring-load's measured window (less \
         0.1 s at each edge) per request answered in it ({irq}). Ratio: uring's over the lowest peer's.\n\
         - p50, p99: uring-load's, from each request's due time (open loop: corrected for coordinated omission; \
         closed loop: from when it was issued).\n\
         - syscalls/req: ours only, their own count over the whole run per request served.\n\
         - busy: how busy the server's CPUs were in the window, whoever for (not idle in /proc/stat), per wall second \
         (100 % = one CPU); at **sat**, well under 100 % per server CPU means the load, not the server, set \
         the pace.\n",
        o.machine,
        o.cpus.server_cpus.count(),
        o.cpus.server_cpus,
        o.cpus.load_cpus,
        o.runs.reps,
        o.runs.duration,
        o.runs.warmup,
    );
    let mut points = Vec::new();
    let mut troubles = Vec::new();
    let mut shared = Vec::new();
    for axis in axes {
        let conns = axis["conns"].as_u64().unwrap();
        let rate_axis = axis["rps"].as_f64().unwrap();
        let _ = writeln!(
            md,
            "## {conns} connections\n\n100 % = {rate_axis:.0} req/s, {}'s saturation.\n\n\
             | load | req/s asked | req/s {short} | CPU us/req {short} | CPU/req uring / best peer | p50 us {short} | p99 us {short} | syscalls/req {} | busy % {short} |\n\
             |---|---|---|---|---|---|---|---|---|",
            axis["of"].as_str().unwrap(),
            &short[..5]
        );
        let mut loads: Vec<Option<u32>> = o.loads.iter().map(|p| Some(*p)).collect();
        loads.push(None);
        for load in loads {
            let ps: Vec<Point> = servers
                .iter()
                .map(|s| point(runs, conns, *s, load))
                .collect();
            // A server not run at this count has no figures (NaN): n/a.
            let three = |f: &dyn Fn(&Point) -> f64, prec: usize| {
                ps.iter()
                    .map(|p| {
                        let v = f(p);
                        if v.is_finite() {
                            format!("{v:.prec$}")
                        } else {
                            "n/a".into()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let ratio = ps[1..]
                .iter()
                .filter(|p| p.cpu_us_per_req.is_finite())
                .min_by(|a, b| a.cpu_us_per_req.total_cmp(&b.cpu_us_per_req))
                .map_or("n/a".into(), |best| {
                    format!(
                        "{:.2} ({})",
                        ps[0].cpu_us_per_req / best.cpu_us_per_req.max(1e-9),
                        best.server
                    )
                });
            let (label, asked) = match load {
                Some(p) => (
                    format!("{p} %"),
                    format!("{:.0}", rate_axis * f64::from(p) / 100.0),
                ),
                None => (
                    format!("sat ({})", three(&|p| p.rps / rate_axis * 100.0, 0)),
                    "closed loop".to_string(),
                ),
            };
            let _ = writeln!(
                md,
                "| {label} | {asked} | {} | {} | {ratio} | {} | {} | {} | {} |",
                three(&|p| p.rps, 0),
                three(&|p| p.cpu_us_per_req, 2),
                three(&|p| p.p50_us, 0),
                three(&|p| p.p99_us, 0),
                ps[..2]
                    .iter()
                    .map(|p| p
                        .syscalls_per_req
                        .map_or("n/a".into(), |s| format!("{s:.2}")))
                    .collect::<Vec<_>>()
                    .join(" / "),
                three(&|p| p.busy_pct, 0),
            );
            for s in servers {
                for r in at(runs, conns, s, load) {
                    if r.others_pct > SHARED_PCT {
                        shared.push(format!(
                            "{conns} conns, {}, {}, rep {}: {:.0} %",
                            s.name(),
                            load.map_or("sat".into(), |p| format!("{p} %")),
                            r.rep + 1,
                            r.others_pct
                        ));
                    }
                    if let Some(t) = r.trouble() {
                        troubles.push(format!(
                            "{conns} conns, {}, {}, rep {}: {t}",
                            s.name(),
                            load.map_or("sat".into(), |p| format!("{p} %")),
                            r.rep + 1
                        ));
                    }
                }
            }
            points.extend(ps);
        }
        let _ = writeln!(md);
    }
    for s in skipped {
        let _ = writeln!(
            md,
            "Not run at {} connections: {}: {}.\n",
            s["conns"],
            s["server"].as_str().unwrap_or(""),
            s["why"].as_str().unwrap_or("")
        );
    }
    if troubles.is_empty() {
        let _ = writeln!(
            md,
            "Every connection was established and every request answered and checked.\n"
        );
    } else {
        let _ = writeln!(md, "Runs with trouble:\n");
        for t in &troubles {
            let _ = writeln!(md, "- {t}");
        }
        let _ = writeln!(md);
    }
    if shared.is_empty() {
        let _ = writeln!(
            md,
            "No run shared the server's CPUs with other processes beyond {SHARED_PCT} % of a CPU.\n"
        );
    } else {
        let _ = writeln!(
            md,
            "Runs whose server shared its CPUs with other processes (their CPU there per wall second, \
             beyond {SHARED_PCT} %; this machine is shared): their figures carry that noise.\n"
        );
        for t in &shared {
            let _ = writeln!(md, "- {t}");
        }
        let _ = writeln!(md);
    }
    let name = match o.proto {
        Proto::Echo => format!("cost-{date}-{kernel}"),
        Proto::Http => format!("cost-http-{date}-{kernel}"),
        Proto::Redis => unreachable!("--proto redis is refused in main"),
    };
    let _ = writeln!(
        md,
        "![CPU per request and p99 against offered load]({name}.svg)"
    );
    println!("{md}");
    let base = format!("{}/{name}", o.out);
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out))?;
    let write = |ext: &str, text: &str| {
        std::fs::write(format!("{base}.{ext}"), text).map_err(|e| format!("{base}.{ext}: {e}"))
    };
    write("md", &md)?;
    write("svg", &plot(o, &points, axes, &proto_title(o.proto))?)?;
    let doc = json!({
        "bench": "cost", "date": date, "kernel": kernel, "commit": commit, "machine": o.machine,
        "command": cmd, "proto": proto, "peer": peer, "servers": names,
        "server_cpus": o.cpus.server_cpus.as_str(), "load_cpus": o.cpus.load_cpus.as_str(),
        "reps": o.runs.reps, "duration_s": o.runs.duration, "warmup_s": o.runs.warmup,
        "loads_pct": o.loads, "rate_axes": axes, "not_run": skipped, "irq_time_accounting": irq_time_accounting(), "seconds": secs, "points": points, "runs": runs,
    });
    write(
        "json",
        &(serde_json::to_string_pretty(&doc).unwrap() + "\n"),
    )?;
    eprintln!("wrote {base}.md, .json and .svg");
    Ok(())
}

fn proto_title(proto: Proto) -> String {
    match proto {
        Proto::Echo => "echo".into(),
        Proto::Http => "HTTP".into(),
        Proto::Redis => unreachable!("--proto redis is refused in main"),
    }
}

/// Two panels per connection count, CPU per request and p99 (log scale) against the load in
/// % of the rate axis, a line per server; its saturation is its last point, at its own %.
fn plot(o: &Opts, points: &[Point], axes: &[Value], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    let conns: Vec<u64> = axes.iter().map(|a| a["conns"].as_u64().unwrap()).collect();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 40 + 360 * conns.len() as u32))
            .into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(
                &format!(
                    "Cost curve ({title}): server CPU per request and p99 against offered load"
                ),
                ("sans-serif", 22),
            )
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((conns.len(), 2));
        for (i, (&c, axis)) in conns.iter().zip(axes).enumerate() {
            let rate_axis = axis["rps"].as_f64().unwrap();
            let lines: Vec<(Server, Vec<Dot>)> = Server::all(o.proto)
                .iter()
                .map(|&s| {
                    let mut pts: Vec<Dot> = points
                        .iter()
                        .filter(|p| p.conns == c && p.server == s.name())
                        .map(|p| {
                            let x = p.load_pct.map_or(p.rps / rate_axis * 100.0, f64::from);
                            (x, p.cpu_us_per_req, p.p99_us, p.load_pct.is_none())
                        })
                        .collect();
                    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (s, pts)
                })
                .collect();
            let ys = |f: fn(&Dot) -> f64| {
                lines
                    .iter()
                    .flat_map(|l| l.1.iter().map(f))
                    .filter(|y| y.is_finite())
                    .collect::<Vec<f64>>()
            };
            let cpu = ys(|p| p.1);
            let cpu_max = cpu.iter().cloned().fold(1.0, f64::max) * 1.15;
            panel(
                &panels[2 * i],
                &lines,
                0.0..cpu_max,
                Panel {
                    caption: format!("{c} connections: server CPU per request"),
                    y_desc: "CPU us / request",
                    y: |p| p.1,
                    // CPU per request falls as the load grows: the upper right is free.
                    legend: SeriesLabelPosition::UpperRight,
                },
            )?;
            let p99 = ys(|p| p.2);
            // Whole decades: the log axis labels them cleanly.
            let lo = p99.iter().cloned().fold(f64::MAX, f64::min).max(1.0);
            let hi = p99.iter().cloned().fold(10.0, f64::max);
            let (lo, hi) = (
                10f64.powf(lo.log10().floor()),
                10f64.powf(hi.log10().ceil().max(lo.log10().floor() + 1.0)),
            );
            panel(
                &panels[2 * i + 1],
                &lines,
                (lo..hi).log_scale(),
                Panel {
                    caption: format!("{c} connections: p99 latency"),
                    y_desc: "p99 us (log)",
                    y: |p| p.2,
                    legend: SeriesLabelPosition::UpperLeft,
                },
            )?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A point of a plot: load %, CPU/req, p99, whether it is the closed-loop saturation.
type Dot = (f64, f64, f64, bool);

/// What one panel shows of the points.
struct Panel {
    caption: String,
    y_desc: &'static str,
    y: fn(&Dot) -> f64,
    legend: SeriesLabelPosition,
}

/// One panel: a line and its points per server, over the load from 0 to the last point.
fn panel<Y>(
    area: &DrawingArea<SVGBackend, Shift>,
    lines: &[(Server, Vec<Dot>)],
    y_range: Y,
    Panel {
        caption,
        y_desc,
        y,
        legend,
    }: Panel,
) -> Result<(), String>
where
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let xmax = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.0))
        .fold(100.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..xmax, y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load, % of the lowest saturation (hollow: each server's own, closed loop)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .y_desc(y_desc)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for (s, pts) in lines {
        let color = s.color();
        let xy: Vec<(f64, f64, bool)> = pts
            .iter()
            .map(|p| (p.0, y(p), p.3))
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(
                xy.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(xy.iter().map(|&(x, y, sat)| {
                if sat {
                    Circle::new((x, y), 5, color.stroke_width(2))
                } else {
                    Circle::new((x, y), 3, color.filled())
                }
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    Ok(())
}
