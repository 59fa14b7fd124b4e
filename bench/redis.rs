//! Both engines serving Redis against Redis 7 itself: `cargo bench --bench redis`
//!
//! The servers: `uring-server --proto redis` and `epoll-server --proto redis` (`--cores 1`:
//! one shard) and `redis-server` (one event-loop thread, `--save ''`), each pinned with
//! `taskset` to the server CPU (core 0), the clients pinned to the load CPU (core 1).
//!
//! 1. **redis-benchmark.** For each append-only mode (off, `everysec`, `always`; ours
//!    `--appendonly FILE --appendfsync X`, Redis `--appendonly yes --appendfsync X`, the
//!    files in the bench's temporary directory) the three servers run side by side, and
//!    every cell (clients `-c`, pipeline `-P`, test `-t`) is measured on each in turn, in
//!    every repetition: the servers alternate cell by cell, since this machine drifts by a
//!    quarter between passes. A cell is one `redis-benchmark -n N -t TEST --csv` run; N is
//!    picked so that the run takes about `--seconds` (from the cell's previous run, else from
//!    a short probe run, which is also its warm-up). CPU per request: the server's user+sys
//!    (/proc/PID/stat) across the run over N. A test a server does not serve (an
//!    `-ERR unknown command`) is recorded as such and not run again.
//! 2. **uring-load at 10,000 connections and above** (AOF off): `uring-load --proto redis`
//!    (its defaults: SET:GET 1:10, 32-byte values) at a fixed rate and closed loop, one
//!    server at a time, fresh for each run, the servers alternating in each repetition. The
//!    connections come from several 127.0.0.x source addresses (`--sources`) to the one
//!    port Redis listens on, the same for all three. CPU per request: the server's user+sys,
//!    sampled every 20 ms and read at the edges of uring-load's measured window (with
//!    epoll-server's worker processes and keyspace owner, all of them). Redis holds at most
//!    RLIMIT_NOFILE - 32 clients: such cells say so. Past one process's connections
//!    epoll-server runs worker processes and a keyspace owner (20,000 connections here).
//!
//! Writes bench/results/redis-<date>-<kernel>-<commit>.md and .json. Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "redis",
    override_usage = "cargo bench --bench redis [-- OPTIONS]",
    about = "uring-server and epoll-server serving Redis against Redis 7: redis-benchmark per \
             append-only mode, and uring-load at 10,000 connections and above",
    after_help = "The default run takes about 8 minutes on 2 cores (the full command set served; less while ours refuse INCR and LPUSH), --quick about 2.5. Needs \
                  redis-server and redis-benchmark (apt-get install -y redis-server) and taskset."
)]
struct Flags {
    /// A short run: --reps 1 --seconds 0.25 --duration 2 --warmup 0.5 --load-conns 10000
    /// (any of those flags given as well wins)
    #[arg(long)]
    quick: bool,
    /// redis-benchmark tests (`-t`), each run on its own
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "set,get,incr,lpush"
    )]
    tests: Vec<String>,
    /// redis-benchmark clients (`-c`)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "50,500",
          value_parser = clap::value_parser!(u64).range(1..))]
    clients: Vec<u64>,
    /// redis-benchmark pipelines (`-P`)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,16",
          value_parser = clap::value_parser!(u64).range(1..))]
    pipelines: Vec<u64>,
    /// Append-only modes: off, or on with its fsync policy: everysec, always, no (never
    /// fsynced)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "off,everysec,always",
          value_parser = ["off", "everysec", "always", "no"])]
    aof: Vec<String>,
    /// Seconds each redis-benchmark run aims at (its -n is picked for it)
    #[arg(long, value_name = "S", default_value = "0.5", value_parser = common::positive)]
    seconds: f64,
    /// uring-load's connection counts (part 2)
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "10000,20000",
          value_parser = clap::value_parser!(u64).range(1..))]
    load_conns: Vec<u64>,
    /// uring-load's fixed rate, requests/s (part 2; it also runs closed loop)
    #[arg(long, value_name = "R", default_value = "20000", value_parser = common::positive)]
    load_rate: f64,
    /// Source addresses of uring-load's connections (part 2)
    #[arg(long, value_name = "ADDRS", default_value = "127.0.0.1-127.0.0.8")]
    sources: String,
    /// Skip part 1 (redis-benchmark)
    #[arg(long)]
    no_benchmark: bool,
    /// Skip part 2 (uring-load)
    #[arg(long)]
    no_load: bool,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Server {
    Uring,
    Epoll,
    Redis,
}

const SERVERS: [Server; 3] = [Server::Uring, Server::Epoll, Server::Redis];

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Uring => "uring",
            Server::Epoll => "epoll",
            Server::Redis => "redis",
        }
    }
}

/// How long a probe run of a cell goes (see `probe`): its rate is the overall one of
/// redis-benchmark's progress lines, every 250 ms, the first once the clients are connected.
const PROBE: Duration = Duration::from_millis(600);

/// The longest a probe run waits for its first rate.
const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// The most requests one redis-benchmark run is given (its -n): bounds a run whose probe was
/// far off.
const MAX_REQUESTS: u64 = 20_000_000;

/// How often the server's CPU is read in part 2: /proc counts it in 10 ms ticks.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The ratios the tables show, as (numerator, denominator).
const RATIOS: [(Server, Server); 3] = [
    (Server::Uring, Server::Redis),
    (Server::Epoll, Server::Redis),
    (Server::Uring, Server::Epoll),
];

fn main() {
    let (mut f, args) = common::parse::<Flags>(|c| {
        c.mut_arg("duration", |a| {
            a.default_value("3")
                .help("uring-load: seconds measured in each run (part 2)")
        })
        .mut_arg("warmup", |a| {
            a.help("uring-load: seconds of warm-up before each run is measured (part 2)")
        })
        .mut_arg("reps", |a| {
            a.default_value("2")
                .help("Repetitions of every run, the servers taking turns in each")
        })
    });
    if f.quick {
        let given = |flag: &str| {
            args.iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        if !given("--reps") {
            f.runs.reps = 1;
        }
        if !given("--seconds") {
            f.seconds = 0.25;
        }
        if !given("--duration") {
            f.runs.duration = 2.0;
        }
        if !given("--warmup") {
            f.runs.warmup = 0.5;
        }
        if !given("--load-conns") {
            f.load_conns = vec![10_000];
        }
    }
    let machine = common::machine();
    // The bench's own threads (the CPU sampler, the pipe readers) stay off the server's CPUs.
    if let Err(e) = c1m::sys::pin_current_thread(f.cpus.load_cpus.cpus()[0]) {
        eprintln!("redis: pinning to CPU {}: {e}", f.cpus.load_cpus.cpus()[0]);
        std::process::exit(1);
    }
    let tmp = std::env::temp_dir().join(format!("c1m-redis-bench-{}", std::process::id()));
    let result = bench(&f, &args, &machine, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    if let Err(e) = result {
        eprintln!("redis: {e}");
        std::process::exit(1);
    }
}

fn bench(f: &Flags, args: &[String], machine: &str, tmp: &Path) -> Result<(), String> {
    for tool in ["redis-server", "redis-benchmark"] {
        if version(tool).is_empty() {
            return Err(format!(
                "{tool} not found (apt-get install -y redis-server)"
            ));
        }
    }
    std::fs::create_dir_all(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let nofile = c1m::sys::limits::HostLimits::read()
        .map_err(|e| format!("reading the host's limits: {e}"))?
        .nofile_hard;
    let started = Instant::now();
    let bench_runs = if f.no_benchmark {
        Vec::new()
    } else {
        benchmark_part(f, tmp, nofile, started)?
    };
    let load_runs = if f.no_load {
        Vec::new()
    } else {
        load_part(f, tmp, nofile, started)?
    };
    write_results(
        f,
        args,
        machine,
        &bench_runs,
        &load_runs,
        started.elapsed().as_secs_f64(),
    )
}

/// A server started by this bench: ours (their "listening on" line waited for) or Redis.
struct Running {
    kind: Server,
    process: Process,
    port: u16,
    /// Its directory (the append-only file, Redis's log).
    dir: PathBuf,
    stopped: bool,
}

enum Process {
    Ours(common::Proc),
    Redis(Child),
}

impl Running {
    /// Starts `kind` pinned to the server CPUs on a free port, its files in `dir`, with the
    /// append-only mode `aof` and room for `conns` connections. The error says why it did not
    /// come up.
    fn start(
        f: &Flags,
        kind: Server,
        aof: &str,
        conns: u64,
        nofile: u64,
        dir: &Path,
    ) -> Result<Running, String> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ports = common::free_ports(1);
        // A range of one: `A-A`.
        let port: u16 = ports
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("free_ports gave `{ports}`"))?;
        let cpus = f.cpus.server_cpus.as_str();
        let process = match kind {
            Server::Uring | Server::Epoll => {
                let bin = if kind == Server::Uring {
                    env!("CARGO_BIN_EXE_uring-server")
                } else {
                    env!("CARGO_BIN_EXE_epoll-server")
                };
                // Room for every connection, as the other benches give.
                let max_conns = (conns + conns / 4).max(1000).to_string();
                let cores = f.cpus.server_cpus.count().to_string();
                let file = dir.join("appendonly.aof");
                let mut a = vec![
                    "--proto",
                    "redis",
                    "--host",
                    "127.0.0.1",
                    "--ports",
                    &ports,
                    "--cores",
                    &cores,
                    "--max-conns",
                    &max_conns,
                ];
                if aof != "off" {
                    a.extend(["--appendonly", file.to_str().unwrap(), "--appendfsync", aof]);
                }
                Process::Ours(common::Proc::try_server_on(cpus, bin, &a)?)
            }
            Server::Redis => Process::Redis(start_redis(cpus, port, aof, nofile, dir)?),
        };
        Ok(Running {
            kind,
            process,
            port,
            dir: dir.to_path_buf(),
            stopped: false,
        })
    }

    fn pid(&self) -> u32 {
        match &self.process {
            Process::Ours(p) => p.child.id(),
            Process::Redis(c) => c.id(),
        }
    }

    /// The processes whose CPU counts: the server and any it started.
    fn pids(&self) -> Vec<u32> {
        common::family(self.pid())
    }

    fn cpu(&self) -> f64 {
        let (u, s) = common::cpu_of_all(&self.pids());
        u + s
    }

    /// What the server said: ours their stderr, Redis its log.
    fn said(&self) -> String {
        match &self.process {
            Process::Ours(p) => p.stderr(),
            Process::Redis(_) => {
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            }
        }
    }

    /// SIGTERM (ours drain for --shutdown-timeout, 5 s by default; Redis flushes its
    /// append-only file), and past 15 s SIGKILL, which the error says.
    fn stop(mut self) -> Result<(), String> {
        self.stopped = true;
        let name = self.kind.name();
        let pid = self.pid();
        let child = match &mut self.process {
            Process::Ours(p) => &mut p.child,
            Process::Redis(c) => c,
        };
        // By PID: a child not reaped yet.
        let _ = c1m::sys::kill(pid, libc::SIGTERM);
        common::wait_bounded(child, Duration::from_secs(15), name).map(|_| ())
    }
}

impl Drop for Running {
    /// A run that failed part-way still leaves no server behind.
    fn drop(&mut self) {
        if !self.stopped {
            let child = match &mut self.process {
                Process::Ours(p) => &mut p.child,
                Process::Redis(c) => c,
            };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts redis-server pinned to `cpus` on `port`: no snapshots, the append-only mode `aof`,
/// its files and log in `dir`, as many clients as RLIMIT_NOFILE's hard limit `nofile` lets
/// it hold (Redis keeps 32 descriptors for itself). Ready once it answers PING.
fn start_redis(cpus: &str, port: u16, aof: &str, nofile: u64, dir: &Path) -> Result<Child, String> {
    let (appendonly, fsync) = match aof {
        "off" => ("no", "everysec"),
        x => ("yes", x),
    };
    let log = dir.join("redis.log");
    let mut child = Command::new("taskset")
        .args(["-c", cpus, "redis-server", "--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
        // Without a password Redis's protected mode answers -DENIED to clients from any
        // address but 127.0.0.1 and ::1, and uring-load's --sources are 127.0.0.x.
        .args(["--protected-mode", "no"])
        // Ours listen with this backlog (the kernel clamps it to somaxconn); Redis's default,
        // 511, overflows under uring-load's connect burst (each overflow: a 1 s SYN retransmit).
        .args(["--tcp-backlog", &c1m::sys::LISTEN_BACKLOG.to_string()])
        .args(["--appendonly", appendonly, "--appendfsync", fsync])
        .args(["--maxclients", &nofile.saturating_sub(32).to_string()])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start redis-server: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping(port) {
            return Ok(child);
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            // By PID: a child not reaped yet.
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "redis-server did not come up on port {port}: {said}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a server on `port` answers PING with +PONG.
fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// What one redis-benchmark cell measured on one server, or why it could not.
#[derive(Clone, Debug)]
struct Cell {
    aof: String,
    clients: u64,
    pipeline: u64,
    test: String,
    server: Server,
    rep: usize,
    outcome: Result<Measured, String>,
}

#[derive(Clone, Debug)]
struct Measured {
    requests: u64,
    seconds: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_req: f64,
}

impl Cell {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "aof": self.aof, "clients": self.clients, "pipeline": self.pipeline,
            "test": self.test, "server": self.server.name(), "rep": self.rep,
        });
        match &self.outcome {
            Ok(m) => {
                v["requests"] = json!(m.requests);
                v["seconds"] = json!(m.seconds);
                v["rps"] = json!(m.rps);
                v["p50_ms"] = json!(m.p50_ms);
                v["p99_ms"] = json!(m.p99_ms);
                v["cpu_us_per_request"] = json!(m.cpu_us_per_req);
            }
            Err(e) => v["error"] = json!(e),
        }
        v
    }
}

/// Part 1: every append-only mode, the three servers side by side, every cell on each in turn.
fn benchmark_part(
    f: &Flags,
    tmp: &Path,
    nofile: u64,
    started: Instant,
) -> Result<Vec<Cell>, String> {
    let mut cells: Vec<Cell> = Vec::new();
    let per_mode = f.clients.len() * f.pipelines.len() * f.tests.len() * SERVERS.len();
    let total = f.aof.len() * f.runs.reps * per_mode;
    let mut done = 0;
    for aof in &f.aof {
        let mut running = Vec::new();
        for s in SERVERS {
            let dir = tmp.join(format!("{}-{aof}", s.name()));
            let conns = f.clients.iter().copied().max().unwrap_or(50);
            running.push(Running::start(f, s, aof, conns, nofile, &dir)?);
        }
        for rep in 0..f.runs.reps {
            for &clients in &f.clients {
                for &pipeline in &f.pipelines {
                    for test in &f.tests {
                        for srv in &running {
                            done += 1;
                            let same = |c: &&Cell| {
                                c.aof == *aof
                                    && c.clients == clients
                                    && c.pipeline == pipeline
                                    && c.test == *test
                                    && c.server == srv.kind
                            };
                            let before: Vec<&Cell> = cells.iter().filter(same).collect();
                            if let Some(e) = before.iter().find_map(|c| c.outcome.as_ref().err()) {
                                eprintln!(
                                    "redis: [{done}/{total}] aof {aof}, -c {clients} -P {pipeline} {test}, {}: not run again ({e})",
                                    srv.kind.name()
                                );
                                continue;
                            }
                            let last = before.iter().rev().find_map(|c| c.outcome.as_ref().ok());
                            let outcome = measure(f, srv, clients, pipeline, test, last, tmp);
                            match &outcome {
                                Ok(m) => eprintln!(
                                    "redis: [{done}/{total}, {:.0} s] aof {aof}, -c {clients} -P {pipeline} {test}, {}: {:.0} req/s, {:.2} us/req, p99 {:.3} ms ({} requests in {:.2} s)",
                                    started.elapsed().as_secs_f64(),
                                    srv.kind.name(),
                                    m.rps,
                                    m.cpu_us_per_req,
                                    m.p99_ms,
                                    m.requests,
                                    m.seconds
                                ),
                                Err(e) => eprintln!(
                                    "redis: [{done}/{total}] aof {aof}, -c {clients} -P {pipeline} {test}, {}: {e}",
                                    srv.kind.name()
                                ),
                            }
                            cells.push(Cell {
                                aof: aof.clone(),
                                clients,
                                pipeline,
                                test: test.clone(),
                                server: srv.kind,
                                rep,
                                outcome,
                            });
                        }
                    }
                }
            }
        }
        for srv in running {
            let name = srv.kind.name();
            let said = srv.said();
            srv.stop()
                .map_err(|e| format!("{name} (aof {aof}): {e}; it said:\n{said}"))?;
        }
    }
    Ok(cells)
}

/// One cell on one server: redis-benchmark with -n picked to take about `--seconds` (from
/// `last`, the cell's previous run, else from a probe run first), the server's CPU across it.
fn measure(
    f: &Flags,
    srv: &Running,
    clients: u64,
    pipeline: u64,
    test: &str,
    last: Option<&Measured>,
    tmp: &Path,
) -> Result<Measured, String> {
    let run = |n: u64| redis_benchmark(f, srv.port, clients, pipeline, test, n, tmp);
    let rps = match last {
        Some(m) => m.rps,
        None => probe(f, srv.port, clients, pipeline, test)?,
    };
    // At least a few requests per client and pipeline slot, so that every client takes part.
    let requests = ((rps * f.seconds) as u64).clamp(clients * pipeline * 4, MAX_REQUESTS);
    let cpu0 = srv.cpu();
    let t = Instant::now();
    let csv = run(requests)?;
    let seconds = t.elapsed().as_secs_f64();
    let cpu = srv.cpu() - cpu0;
    Ok(Measured {
        requests,
        seconds,
        rps: csv.rps,
        p50_ms: csv.p50_ms,
        p99_ms: csv.p99_ms,
        cpu_us_per_req: cpu / requests as f64 * 1e6,
    })
}

/// A probe run of one test: redis-benchmark without an end (`-n` far beyond what it gets to)
/// read for `PROBE` (its progress line, every 250 ms, carries the rate so far), then stopped:
/// the test's rate on this server, whatever it is (AOF always may be a hundred times slower
/// than off), in a bounded time. It is also the cell's warm-up.
fn probe(f: &Flags, port: u16, clients: u64, pipeline: u64, test: &str) -> Result<f64, String> {
    let mut child = Command::new("taskset")
        .args(["-c", f.cpus.load_cpus.as_str(), "redis-benchmark"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
        .args(["-n", &MAX_REQUESTS.to_string(), "-t", test, "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start redis-benchmark: {e}"))?;
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    // "SET: rps=71144.0 (overall: 70860.6) avg_msec=0.374 (overall: 0.374)\r", each line
    // overwriting the last; the overall rate of the last one read by the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            let _ = tx.send(String::from_utf8_lossy(&text).to_string());
        }
    });
    let overall = |text: &str| {
        text.rsplit('\r')
            .filter_map(|l| {
                l.split("(overall: ")
                    .nth(1)?
                    .split(')')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .find(|r| *r > 0.0)
    };
    // The first lines say 0.0 while the clients connect (500 of them: a second or so).
    let start = Instant::now();
    let mut said = String::new();
    while let Ok(t) =
        rx.recv_timeout((start + PROBE_LIMIT).saturating_duration_since(Instant::now()))
    {
        said = t;
        if start.elapsed() >= PROBE && overall(&said).is_some() {
            break;
        }
    }
    // By PID: a child not reaped yet.
    let _ = child.kill();
    let _ = child.wait();
    let overall = overall(&said);
    overall.ok_or_else(|| {
        let err = errs.join().unwrap_or_default();
        let why = err
            .lines()
            .chain(said.lines())
            .find(|l| l.contains("Error") || l.contains("ERR"))
            .unwrap_or("no rate in its progress lines");
        format!("redis-benchmark probe: {}", why.trim())
    })
}

/// redis-benchmark's figures of one test (its `--csv` line).
struct Csv {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// One redis-benchmark run of `test`, pinned to the load CPUs, bounded in time; the error is
/// what it said (a server's `-ERR unknown command`, say).
fn redis_benchmark(
    f: &Flags,
    port: u16,
    clients: u64,
    pipeline: u64,
    test: &str,
    requests: u64,
    tmp: &Path,
) -> Result<Csv, String> {
    let (out, err) = (
        tmp.join("redis-benchmark.out"),
        tmp.join("redis-benchmark.err"),
    );
    let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut child = Command::new("taskset")
        .args(["-c", f.cpus.load_cpus.as_str(), "redis-benchmark"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
        .args(["-n", &requests.to_string(), "-t", test, "--csv", "-q"])
        .stdin(Stdio::null())
        .stdout(file(&out)?)
        .stderr(file(&err)?)
        .spawn()
        .map_err(|e| format!("start redis-benchmark: {e}"))?;
    // Room for a run far slower than its probe said.
    let limit = Duration::from_secs_f64(30.0 + 20.0 * f.seconds);
    let st = common::wait_bounded(&mut child, limit, "redis-benchmark")?;
    let out = std::fs::read_to_string(&out).unwrap_or_default();
    let err = std::fs::read_to_string(&err).unwrap_or_default();
    // It warns on stderr that it could not read the server's CONFIG (ours have none): not a
    // failure; a server's error reply is.
    let said = || {
        err.lines()
            .chain(out.lines())
            .find(|l| l.contains("Error") || l.contains("ERR"))
            .unwrap_or(err.trim())
            .trim()
            .to_string()
    };
    if !st.success() {
        return Err(format!("redis-benchmark {st}: {}", said()));
    }
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    // "p99_latency_ms","max_latency_ms"
    let row = out
        .lines()
        .find(|l| !l.starts_with("\"test\""))
        .ok_or_else(|| format!("redis-benchmark wrote no figures: {out}{err}"))?;
    let v: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|x| x.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    match v.as_slice() {
        [rps, _, _, p50, _, p99, _] if rps.is_finite() => Ok(Csv {
            rps: *rps,
            p50_ms: *p50,
            p99_ms: *p99,
        }),
        _ => Err(format!("redis-benchmark's figures not read: {row}")),
    }
}

/// What one uring-load run measured on one server, or why it was not run.
#[derive(Clone, Debug)]
struct LoadRun {
    conns: u64,
    /// The fixed rate; none: closed loop.
    rate: Option<f64>,
    server: Server,
    rep: usize,
    outcome: Result<Value, LoadErr>,
}

/// Why a uring-load run has no figures.
#[derive(Clone, Debug)]
enum LoadErr {
    /// The server cannot hold the connections here, or refused to start for them: the cell
    /// says why, and the server is not tried again at that count.
    NotRun(String),
    /// The run went wrong (uring-load's errors, connections not established).
    Failed(String),
}

impl std::fmt::Display for LoadErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadErr::NotRun(e) => write!(f, "not run: {e}"),
            LoadErr::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

impl LoadRun {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "conns": self.conns, "mode": if self.rate.is_some() { "rate" } else { "closed" },
            "rate_rps": self.rate, "server": self.server.name(), "rep": self.rep,
        });
        match &self.outcome {
            Ok(m) => {
                for (k, x) in m.as_object().into_iter().flatten() {
                    v[k] = x.clone();
                }
            }
            Err(LoadErr::NotRun(e)) => v["not_run"] = json!(e),
            Err(LoadErr::Failed(e)) => v["error"] = json!(e),
        }
        v
    }

    fn num(&self, key: &str) -> f64 {
        self.outcome
            .as_ref()
            .ok()
            .and_then(|v| v[key].as_f64())
            .unwrap_or(f64::NAN)
    }
}

/// Part 2: uring-load at each connection count, fixed rate and closed loop, a fresh server
/// per run, the servers alternating in each repetition.
fn load_part(f: &Flags, tmp: &Path, nofile: u64, started: Instant) -> Result<Vec<LoadRun>, String> {
    let mut runs: Vec<LoadRun> = Vec::new();
    let total = f.load_conns.len() * 2 * f.runs.reps * SERVERS.len();
    for &conns in &f.load_conns {
        for rate in [Some(f.load_rate), None] {
            for rep in 0..f.runs.reps {
                for server in SERVERS {
                    let same = |r: &&LoadRun| r.conns == conns && r.server == server;
                    // A server that could not hold the connections once is not tried again.
                    let before = runs.iter().filter(same).find_map(|r| match &r.outcome {
                        Err(e @ LoadErr::NotRun(_)) => Some(e.clone()),
                        _ => None,
                    });
                    if let Some(e) = before {
                        let outcome = Err(e);
                        runs.push(LoadRun {
                            conns,
                            rate,
                            server,
                            rep,
                            outcome,
                        });
                        continue;
                    }
                    let outcome = load_run(f, server, conns, rate, nofile, tmp);
                    let mode = rate.map_or("closed loop".into(), |r| format!("{r:.0} req/s"));
                    match &outcome {
                        Ok(v) => eprintln!(
                            "redis: load [{}/{total}, {:.0} s] {conns} conns, {mode}, {}: {:.0} req/s, {:.2} us/req, p50 {} us, p99 {} us",
                            runs.len() + 1,
                            started.elapsed().as_secs_f64(),
                            server.name(),
                            v["throughput_rps"].as_f64().unwrap_or(0.0),
                            v["cpu_us_per_request"].as_f64().unwrap_or(f64::NAN),
                            v["p50_us"],
                            v["p99_us"],
                        ),
                        Err(e) => eprintln!(
                            "redis: load [{}/{total}] {conns} conns, {mode}, {}: {e}",
                            runs.len() + 1,
                            server.name()
                        ),
                    }
                    runs.push(LoadRun {
                        conns,
                        rate,
                        server,
                        rep,
                        outcome,
                    });
                }
            }
        }
    }
    Ok(runs)
}

/// Why `server` cannot hold `conns` connections here, if it cannot (Redis: a descriptor per
/// client, 32 kept for itself, under RLIMIT_NOFILE's hard limit `nofile`).
fn cannot_hold(server: Server, conns: u64, nofile: u64) -> Option<String> {
    (server == Server::Redis && conns + 32 > nofile).then(|| {
        format!(
            "redis-server holds at most RLIMIT_NOFILE - 32 = {} clients, and RLIMIT_NOFILE's hard \
             limit here is {nofile} (raising it needs CAP_SYS_RESOURCE)",
            nofile.saturating_sub(32)
        )
    })
}

/// One uring-load run against a fresh server; the error is why it did not run (a server that
/// cannot hold the connections, or refuses to).
fn load_run(
    f: &Flags,
    server: Server,
    conns: u64,
    rate: Option<f64>,
    nofile: u64,
    tmp: &Path,
) -> Result<Value, LoadErr> {
    if let Some(why) = cannot_hold(server, conns, nofile) {
        return Err(LoadErr::NotRun(why));
    }
    let dir = tmp.join(format!("{}-load", server.name()));
    // On one line: a table's note (epoll-server's refusal is on its stderr's last line).
    let one_line = |e: String| LoadErr::NotRun(e.split_whitespace().collect::<Vec<_>>().join(" "));
    let srv = Running::start(f, server, "off", conns, nofile, &dir).map_err(one_line)?;
    measure_load(f, srv, conns, rate, tmp).map_err(LoadErr::Failed)
}

/// uring-load against `srv`, which is stopped after it; the server's CPU over its measured
/// window.
fn measure_load(
    f: &Flags,
    srv: Running,
    conns: u64,
    rate: Option<f64>,
    tmp: &Path,
) -> Result<Value, String> {
    let server = srv.kind;
    let sampler = Sampler::start(srv.pids());
    let spawned = Instant::now();
    let report = uring_load(f, srv.port, conns, rate, tmp);
    let samples = sampler.stop();
    let said = srv.said();
    srv.stop()
        .map_err(|e| format!("{}: {e}; it said:\n{said}", server.name()))?;
    let l = report?;
    let num = |k: &str| {
        l[k].as_f64()
            .ok_or_else(|| format!("uring-load json: no {k}"))
    };
    let (ramp, duration, requests) = (num("ramp_s")?, num("duration_s")?, num("requests")?);
    // The measured window, known from outside to a sample or so: 0.1 s left out at each edge.
    let edge = (duration / 5.0).min(0.1);
    let from = spawned + Duration::from_secs_f64(ramp + f.runs.warmup + edge);
    let until = from + Duration::from_secs_f64((duration - 2.0 * edge).max(0.0));
    let span = (until - from).as_secs_f64().max(1e-9);
    let cpu = cpu_at(&samples, until) - cpu_at(&samples, from);
    let per_sec = requests / duration.max(1e-9);
    Ok(json!({
        "throughput_rps": l["throughput_rps"], "requests": l["requests"],
        "p50_us": l["latency_us"]["p50"], "p99_us": l["latency_us"]["p99"],
        "cpu_us_per_request": cpu / span / per_sec.max(1e-9) * 1e6,
        // The server's CPU per wall second over the window, in % of one CPU: well under 100 %
        // means the load (uring-load on its one CPU), not the server, set the pace.
        "server_busy_pct": cpu / span * 100.0,
        "conns_established": l["conns_established"], "errors": l["errors"],
        "redis": l["redis"], "ramp_s": ramp,
    }))
}

/// One reading of the server's CPU seconds (user+sys), with its time.
type Sample = (Instant, f64);

/// The server's CPU, sampled every `SAMPLE_EVERY` on a thread of its own.
struct Sampler {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(pids: Vec<u32>) -> Sampler {
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                loop {
                    let (u, s) = common::cpu_of_all(&pids);
                    samples.push((Instant::now(), u + s));
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

/// The CPU at `t`, interpolated between the samples around it.
fn cpu_at(samples: &[Sample], t: Instant) -> f64 {
    let i = samples.partition_point(|s| s.0 <= t);
    match (
        i.checked_sub(1).map(|j| samples[j]),
        samples.get(i).copied(),
    ) {
        (Some(a), Some(b)) => {
            let k = (t - a.0).as_secs_f64() / (b.0 - a.0).as_secs_f64().max(1e-9);
            a.1 + (b.1 - a.1) * k
        }
        (Some(a), None) | (None, Some(a)) => a.1,
        (None, None) => 0.0,
    }
}

/// `uring-load --proto redis` against `port` from `--sources`, closed loop or at `rate`,
/// pinned to the load CPUs: its JSON report. Errors or connections not established fail it.
fn uring_load(
    f: &Flags,
    port: u16,
    conns: u64,
    rate: Option<f64>,
    tmp: &Path,
) -> Result<Value, String> {
    let json = tmp.join("uring-load.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        f.cpus.load_cpus.as_str(),
        env!("CARGO_BIN_EXE_uring-load"),
    ])
    .args([
        "--proto",
        "redis",
        "--host",
        "127.0.0.1",
        "--ports",
        &port.to_string(),
    ])
    .args(["--sources", &f.sources, "--conns", &conns.to_string()])
    .args(["--cores", &f.cpus.load_cpus.count().to_string()])
    .args(["--duration", &f.runs.duration.to_string()])
    .args(["--warmup", &f.runs.warmup.to_string()])
    .args(["--quiet", "--json"])
    .arg(&json)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let Some(r) = rate {
        cmd.args(["--rate", &format!("{r:.0}")]);
    }
    // Room for connecting and for the closing.
    let limit = Duration::from_secs_f64(f.runs.warmup + f.runs.duration + 60.0);
    let (st, stderr) = common::run_bounded(&mut cmd, limit, "uring-load")?;
    if !st.success() {
        return Err(format!("uring-load failed ({st}): {}", stderr.trim()));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("uring-load json: {e}"))
}

/// The first line a tool prints of its version (`redis-server -v`), empty when it is not there.
fn version(tool: &str) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The median of `xs`, NaN when there are none.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return f64::NAN;
    }
    common::median(&mut xs)
}

/// A figure, or n/a.
fn fig(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "n/a".into()
    }
}

fn write_results(
    f: &Flags,
    args: &[String],
    machine: &str,
    cells: &[Cell],
    loads: &[LoadRun],
    secs: f64,
) -> Result<(), String> {
    let (date, kernel, commit) = (common::today(), common::kernel(), common::commit());
    let cmd = format!("cargo bench --bench redis -- {}", args.join(" "));
    let (redis_v, bench_v) = (version("redis-server"), version("redis-benchmark"));
    let mut md = format!(
        "# Redis: uring-server and epoll-server against Redis 7\n\n\
         {date} · kernel {kernel} · commit {commit} · {machine} · {secs:.0} s\n\n`{cmd}`\n\n\
         Servers, pinned to CPU {}: `uring-server --proto redis --cores {n}`, `epoll-server --proto redis \
         --cores {n}` and {redis_v} (`--save ''`); clients pinned to CPU {}. Medians of {} repetition(s); \
         ratios of the medians. CPU/req: the server's user+sys (/proc/PID/stat) over the requests.\n\n",
        f.cpus.server_cpus,
        f.cpus.load_cpus,
        f.runs.reps,
        n = f.cpus.server_cpus.count(),
    );
    let ratio = |a: f64, b: f64| fig(a / b, 2);
    if !cells.is_empty() {
        let _ = writeln!(
            md,
            "## redis-benchmark\n\n{bench_v}: `redis-benchmark -c C -P P -n N -t TEST --csv`, one test per \
             run, N picked for about {} s a run. The three servers run side by side per append-only mode and \
             take turns cell by cell. AOF off: ours without `--appendonly`, Redis `--appendonly no`; else \
             ours `--appendonly FILE --appendfsync X`, Redis `--appendonly yes --appendfsync X`.\n",
            f.seconds
        );
        for aof in &f.aof {
            let _ = writeln!(
                md,
                "### AOF {aof}\n\n| test | -c | -P | req/s uring / epoll / redis | uring/redis | epoll/redis | \
                 uring/epoll | CPU us/req uring / epoll / redis | p99 ms uring / epoll / redis |\n\
                 |---|---|---|---|---|---|---|---|---|"
            );
            for &c in &f.clients {
                for &p in &f.pipelines {
                    for t in &f.tests {
                        let of = |s: Server| -> Vec<&Cell> {
                            cells
                                .iter()
                                .filter(|x| {
                                    x.aof == *aof
                                        && x.clients == c
                                        && x.pipeline == p
                                        && x.test == *t
                                        && x.server == s
                                })
                                .collect()
                        };
                        let med = |s: Server, g: fn(&Measured) -> f64| {
                            median(
                                of(s)
                                    .iter()
                                    .filter_map(|x| x.outcome.as_ref().ok())
                                    .map(g)
                                    .collect(),
                            )
                        };
                        let three = |g: fn(&Measured) -> f64, prec: usize| {
                            SERVERS
                                .iter()
                                .map(|&s| {
                                    match of(s).iter().find_map(|x| x.outcome.as_ref().err()) {
                                        Some(_) => "err".to_string(),
                                        None => fig(med(s, g), prec),
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(" / ")
                        };
                        let rps = |s| med(s, |m| m.rps);
                        let _ = writeln!(
                            md,
                            "| {} | {c} | {p} | {} | {} | {} | {} | {} | {} |",
                            t.to_uppercase(),
                            three(|m| m.rps, 0),
                            ratio(rps(Server::Uring), rps(Server::Redis)),
                            ratio(rps(Server::Epoll), rps(Server::Redis)),
                            ratio(rps(Server::Uring), rps(Server::Epoll)),
                            three(|m| m.cpu_us_per_req, 2),
                            three(|m| m.p99_ms, 3),
                        );
                    }
                }
            }
            let _ = writeln!(md);
        }
    }
    if !loads.is_empty() {
        let _ = writeln!(
            md,
            "## uring-load --proto redis at {} connections\n\n`uring-load --proto redis` (SET:GET 1:10, \
             32-byte values, every reply checked) from `--sources {}` to the server's one port, AOF off; a fresh \
             server per run, the servers alternating. Fixed rate {:.0} req/s (latency from each request's due \
             time), and closed loop (a request outstanding per connection). {} s measured after {} s of \
             warm-up. CPU/req: the server's, over uring-load's measured window.\n\n\
             | conns | load | req/s uring / epoll / redis | p50 us | p99 us | CPU us/req | server busy % | \
             req/s {r} | CPU/req {r} |\n|---|---|---|---|---|---|---|---|---|",
            f.load_conns
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            f.sources,
            f.load_rate,
            f.runs.duration,
            f.runs.warmup,
            r = RATIOS
                .iter()
                .map(|(a, b)| format!("{}/{}", a.name(), b.name()))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut not_run = Vec::new();
        for &conns in &f.load_conns {
            for rate in [Some(f.load_rate), None] {
                let of = |s: Server| {
                    loads
                        .iter()
                        .filter(move |x| x.conns == conns && x.rate == rate && x.server == s)
                };
                let med = |s: Server, k: &str| median(of(s).map(|x| x.num(k)).collect());
                let three = |k: &str, prec: usize| {
                    SERVERS
                        .iter()
                        .map(|&s| fig(med(s, k), prec))
                        .collect::<Vec<_>>()
                        .join(" / ")
                };
                let ratios = |k: &str| {
                    RATIOS
                        .iter()
                        .map(|&(a, b)| ratio(med(a, k), med(b, k)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(
                    md,
                    "| {conns} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    rate.map_or("closed loop".into(), |r| format!("{r:.0} req/s")),
                    three("throughput_rps", 0),
                    three("p50_us", 0),
                    three("p99_us", 0),
                    three("cpu_us_per_request", 2),
                    three("server_busy_pct", 0),
                    ratios("throughput_rps"),
                    ratios("cpu_us_per_request"),
                );
                for s in SERVERS {
                    for x in of(s) {
                        match &x.outcome {
                            // Once per server and count.
                            Err(LoadErr::NotRun(e)) if rate.is_some() && x.rep == 0 => not_run
                                .push(format!("- {conns} connections, {}: not run: {e}", s.name())),
                            Err(LoadErr::Failed(e)) => not_run.push(format!(
                                "- {conns} connections, {}, {}, rep {}: failed: {e}",
                                s.name(),
                                rate.map_or("closed loop".into(), |r| format!("{r:.0} req/s")),
                                x.rep + 1
                            )),
                            _ => {}
                        }
                    }
                }
            }
        }
        let _ = writeln!(md);
        if !not_run.is_empty() {
            let _ = writeln!(
                md,
                "Not run or failed (n/a above):\n\n{}\n",
                not_run.join("\n")
            );
        }
    }
    // Failures grouped by server, test and error (a command a server does not serve fails
    // in every cell alike).
    let mut failed: Vec<(String, Vec<String>)> = Vec::new();
    for c in cells.iter().filter(|c| c.rep == 0) {
        if let Err(e) = &c.outcome {
            let what = format!("{} {}: {e}", c.server.name(), c.test.to_uppercase());
            let cell = format!("AOF {} -c {} -P {}", c.aof, c.clients, c.pipeline);
            match failed.iter_mut().find(|f| f.0 == what) {
                Some(f) => f.1.push(cell),
                None => failed.push((what, vec![cell])),
            }
        }
    }
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "redis-benchmark runs that failed (err above; not run again):\n"
        );
        let per_aof = f.clients.len() * f.pipelines.len();
        for (what, at) in &failed {
            let at = if at.len() == per_aof * f.aof.len() {
                "every cell".to_string()
            } else {
                at.join(", ")
            };
            let _ = writeln!(md, "- {what} ({at})");
        }
        let _ = writeln!(md);
    }
    print!("{md}");
    std::fs::create_dir_all(&f.output.out).map_err(|e| format!("{}: {e}", f.output.out))?;
    let stem = format!("{}/redis-{date}-{kernel}-{commit}", f.output.out);
    let doc = json!({
        "bench": "redis", "date": date, "kernel": kernel, "commit": commit, "machine": machine,
        "command": cmd, "redis_server": redis_v, "redis_benchmark": bench_v,
        "server_cpus": f.cpus.server_cpus.as_str(), "load_cpus": f.cpus.load_cpus.as_str(),
        "reps": f.runs.reps, "seconds_per_benchmark_run": f.seconds,
        "load": { "conns": f.load_conns, "rate_rps": f.load_rate, "sources": f.sources,
                  "duration_s": f.runs.duration, "warmup_s": f.runs.warmup },
        "seconds": secs,
        "redis_benchmark_runs": cells.iter().map(Cell::to_json).collect::<Vec<_>>(),
        "uring_load_runs": loads.iter().map(LoadRun::to_json).collect::<Vec<_>>(),
    });
    let write = |ext: &str, text: &str| {
        std::fs::write(format!("{stem}.{ext}"), text).map_err(|e| format!("{stem}.{ext}: {e}"))
    };
    write("md", &md)?;
    write(
        "json",
        &(serde_json::to_string_pretty(&doc).unwrap() + "\n"),
    )?;
    eprintln!("wrote {stem}.md and .json");
    Ok(())
}
