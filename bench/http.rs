//! HTTP plaintext, our two engines against nginx: `cargo bench --bench http`
//!
//! `uring-server --proto http`, `epoll-server --proto http` and nginx (one worker per server
//! CPU) serve the same fixed answer to `GET /plaintext` (200, text/plain, `Hello, World!`,
//! keep-alive) on the server CPUs, and each is driven from the load CPUs by wrk and by
//! `uring-load --proto http`, at the same connection counts and pipeline depths. Every run
//! starts a fresh server; the three take turns, the order rotating every repetition, and
//! medians are reported with the throughput's spread. Per point and server: throughput,
//! latency p50/p99, server CPU (user+sys from /proc/PID/stat; nginx: its workers) per request,
//! how busy the server was while measured, and the ratios uring/nginx, epoll/nginx and
//! uring/epoll from the same run. Writes bench/results/http-<date>-<kernel>.md and .json.
//!
//! How each number is taken:
//! - wrk has no warm-up flag: a wrk run of --warmup seconds on the same server goes first.
//!   It runs one thread per load CPU and whole seconds (-d rounds up). Pipelining is wrk's own
//!   way, a Lua script (written to a temp file) whose request is N copies of `wrk.format()`;
//!   depth 1 runs without a script.
//! - wrk's latency percentiles go through its coordinated-omission correction, which moves
//!   samples below the recorded minimum where its percentile walk never looks (wrk 4.1
//!   `stats_correct`), and with pipelining it records one sample per batch against an interval
//!   computed per answer: its pipelined percentiles are wrong (often 0), so they are left out.
//! - CPU per request: the server's user+sys over its whole life (warm-up included) divided by
//!   the requests it counted itself (ours: `--stats-json` totals.requests; nginx: stub_status,
//!   served on its own `location =`, which costs the plaintext location nothing).
//! - busy: the server's CPU during the measured client run over its wall time; well under
//!   100 % per server CPU means the client, not the server, set the pace.
//!
//! Each server's answer is checked once before the runs, and nginx's request count read, by
//! the load generator's own answer check (`c1m::proto::http::ResponseCheck`).
//!
//! Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use c1m::proto::http::{Answer, BODY, Malformed, ResponseCheck};
use clap::Parser;
use serde_json::{Value, json};

const PATH: &str = "/plaintext";
const STATUS_PATH: &str = common::NGINX_STATUS_PATH;

#[derive(Parser, Debug)]
#[command(
    name = "http",
    override_usage = "cargo bench --bench http [-- OPTIONS]",
    about = "HTTP plaintext, both engines vs nginx, under wrk and uring-load"
)]
struct Opts {
    /// Connection counts
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "50,500"
    )]
    conns: Vec<u64>,
    /// Requests written together on a connection
    #[arg(long = "pipeline", value_name = "LIST", value_delimiter = ',', default_value = "1,16",
          value_parser = clap::value_parser!(u32).range(1..))]
    pipelines: Vec<u32>,
    /// The clients that drive the servers
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "wrk,uring-load"
    )]
    clients: Vec<Client>,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
    /// The arguments as given, for the recorded command.
    #[arg(skip)]
    argv: String,
}

fn opts() -> Opts {
    let (mut o, args) = common::parse::<Opts>(|c| c);
    o.argv = args.join(" ");
    o
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Server {
    Uring,
    Epoll,
    Nginx,
}

const SERVERS: [Server; 3] = [Server::Uring, Server::Epoll, Server::Nginx];

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Uring => "uring",
            Server::Epoll => "epoll",
            Server::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
enum Client {
    Wrk,
    UringLoad,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Wrk => "wrk",
            Client::UringLoad => "uring-load",
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// Sends `sig` to a process this bench started and has not reaped (or, for nginx workers,
/// its master did), so the PID is still that process; one already gone is no error here.
fn signal(pid: u32, sig: libc::c_int) {
    let _ = c1m::sys::kill(pid, sig);
}

/// A server started for one run.
struct Running {
    kind: Server,
    child: Child,
    port: u16,
    /// The processes whose CPU counts: ours, or nginx's workers (not its idle master).
    workers: Vec<u32>,
    stats: PathBuf,
    stopped: bool,
}

fn nginx_dir() -> PathBuf {
    std::env::temp_dir().join(format!("c1m-http-nginx-{}", std::process::id()))
}

impl Running {
    fn start(o: &Opts, kind: Server, conns: u64) -> Result<Running, String> {
        let port = free_port();
        let stats =
            std::env::temp_dir().join(format!("c1m-http-stats-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&stats);
        let cores = o.cpus.server_cpus.count();
        let (child, workers) = match kind {
            Server::Uring | Server::Epoll => {
                let bin = if kind == Server::Uring {
                    env!("CARGO_BIN_EXE_uring-server")
                } else {
                    env!("CARGO_BIN_EXE_epoll-server")
                };
                let max_conns = (conns + conns / 4).max(1000).to_string();
                let p = common::Proc::server_on(
                    o.cpus.server_cpus.as_str(),
                    bin,
                    &[
                        "--proto",
                        "http",
                        "--host",
                        "127.0.0.1",
                        "--ports",
                        &port.to_string(),
                        "--cores",
                        &cores.to_string(),
                        "--max-conns",
                        &max_conns,
                        "--stats-json",
                        stats.to_str().unwrap(),
                    ],
                );
                let workers = common::family(p.child.id());
                (p.child, workers)
            }
            Server::Nginx => {
                common::start_nginx(&o.cpus.server_cpus, &nginx_dir(), &[port], conns)?
            }
        };
        Ok(Running {
            kind,
            child,
            port,
            workers,
            stats,
            stopped: false,
        })
    }

    /// (user, sys) CPU seconds of the serving processes so far.
    fn cpu(&self) -> (f64, f64) {
        self.workers
            .iter()
            .map(|&p| common::cpu_of(p))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Stops the server; returns the requests it counted over its life.
    fn stop(mut self) -> Result<u64, String> {
        let nginx_requests = if self.kind == Server::Nginx {
            Some(nginx_requests(self.port))
        } else {
            None
        };
        self.stopped = true;
        // nginx: SIGTERM is its fast shutdown. Ours: SIGTERM, then --shutdown-timeout (5 s).
        signal(self.child.id(), libc::SIGTERM);
        let st = common::wait_bounded(&mut self.child, Duration::from_secs(15), self.kind.name());
        if st.is_err() {
            for &w in &self.workers {
                signal(w, libc::SIGKILL);
            }
        }
        st?;
        match nginx_requests {
            Some(n) => n,
            None => {
                let text = std::fs::read_to_string(&self.stats)
                    .map_err(|e| format!("{}: {e}", self.stats.display()))?;
                let _ = std::fs::remove_file(&self.stats);
                let s: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                s["totals"]["requests"]
                    .as_u64()
                    .ok_or_else(|| "--stats-json has no totals.requests".to_string())
            }
        }
    }
}

impl Drop for Running {
    /// A run that failed part-way still leaves no server behind.
    fn drop(&mut self) {
        if !self.stopped {
            signal(self.child.id(), libc::SIGKILL);
            for &w in &self.workers {
                signal(w, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 keep-alive GET on a fresh connection, framed by the load generator's
/// answer check with `body` as the expected body: (the bytes of the answer, the check's
/// reading of it).
fn http_get(port: u16, path: &str, body: &[u8]) -> Result<(Vec<u8>, Answer), String> {
    let err = |e: std::io::Error| format!("GET {path} on port {port}: {e}");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(err)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").map_err(err)?;
    let mut check = ResponseCheck::new();
    let (mut raw, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = s.read(&mut chunk).map_err(err)?;
        if n == 0 {
            return Err(format!(
                "GET {path} on port {port}: closed before the answer ended"
            ));
        }
        raw.extend_from_slice(&chunk[..n]);
        let mut answer = None;
        check
            .on_input(&chunk[..n], body, |a| answer = answer.or(Some(a)))
            .map_err(|Malformed| {
                format!(
                    "GET {path} on port {port}: an answer without Content-Length framing: {:?}",
                    String::from_utf8_lossy(&raw)
                )
            })?;
        if let Some(a) = answer {
            return Ok((raw, a));
        }
    }
}

/// nginx's own count of the requests it read (stub_status), this one excluded.
fn nginx_requests(port: u16) -> Result<u64, String> {
    let (raw, _) = http_get(port, STATUS_PATH, b"")?;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // "Active connections: 1 \nserver accepts handled requests\n 3 3 3 \n..."
    body.lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .map(|n| n.saturating_sub(1))
        .ok_or_else(|| format!("nginx stub_status: unexpected {body:?}"))
}

/// What a server answers, checked once before the runs.
fn check_answer(o: &Opts, kind: Server) -> Result<Value, String> {
    let srv = Running::start(o, kind, 1)?;
    let got = http_get(srv.port, PATH, BODY);
    srv.stop()?;
    let (raw, answer) = got?;
    let text = String::from_utf8_lossy(&raw).to_string();
    if answer.status != 200 || !answer.body_ok {
        return Err(format!(
            "{} answers GET {PATH} with {text:?}, not 200 `Hello, World!`",
            kind.name()
        ));
    }
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let headers: Vec<&str> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|h| h.0))
        .collect();
    Ok(json!({ "bytes": raw.len(), "status_line": head.lines().next(), "headers": headers }))
}

/// What a client measured in one run.
#[derive(Default)]
struct Load {
    rps: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    /// Requests the client counted while measuring.
    requests: u64,
    errors: u64,
    error_detail: String,
}

/// wrk's time unit suffixes: "759.00us", "12.20ms", "1.20s", "2.00m".
fn wrk_us(v: &str) -> Option<f64> {
    let units = [
        ("us", 1.0),
        ("ms", 1e3),
        ("s", 1e6),
        ("m", 60e6),
        ("h", 3600e6),
    ];
    units.iter().find_map(|(u, k)| {
        v.strip_suffix(u)
            .and_then(|n| n.parse::<f64>().ok())
            .map(|n| n * k)
    })
}

fn parse_wrk(out: &str, pipeline: u32) -> Result<Load, String> {
    let mut l = Load::default();
    let pct = |p: &str| {
        out.lines().find_map(|line| {
            let mut f = line.split_whitespace();
            (f.next() == Some(p)).then(|| f.next().and_then(wrk_us))?
        })
    };
    // 0 means wrk lost the samples (see the module doc); pipelined it is wrong either way.
    if pipeline == 1 {
        l.p50 = pct("50%").filter(|v| *v > 0.0);
        l.p99 = pct("99%").filter(|v| *v > 0.0);
    }
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            l.rps = v.trim().parse().map_err(|_| format!("wrk: bad `{line}`"))?;
        } else if line.contains(" requests in ") {
            l.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("wrk: bad `{line}`"))?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 0"
            let n: u64 = v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            if n > 0 {
                l.errors += n;
                let _ = write!(l.error_detail, "socket errors:{v}; ");
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            l.errors += v.trim().parse::<u64>().unwrap_or(0);
            let _ = write!(l.error_detail, "non-2xx:{v}; ");
        }
    }
    if l.rps == 0.0 {
        return Err(format!("wrk: no Requests/sec in its output:\n{out}"));
    }
    Ok(l)
}

fn wrk(
    o: &Opts,
    port: u16,
    conns: u64,
    pipeline: u32,
    secs: f64,
    lua: &Path,
) -> Result<Load, String> {
    let threads = o.cpus.load_cpus.count().min(conns as usize).max(1);
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", o.cpus.load_cpus.as_str(), "wrk", "--latency"])
        .args(["-t", &threads.to_string(), "-c", &conns.to_string()])
        .arg(format!("-d{}s", secs.ceil().max(1.0)));
    if pipeline > 1 {
        cmd.arg("-s").arg(lua);
    }
    cmd.arg(format!("http://127.0.0.1:{port}{PATH}"));
    if pipeline > 1 {
        cmd.args(["--", &pipeline.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start wrk (apt install wrk): {e}"))?;
    // wrk prints a few hundred bytes, well within a pipe's buffer, so waiting first is safe.
    let st = common::wait_bounded(&mut child, Duration::from_secs_f64(secs + 30.0), "wrk")?;
    let (mut out, mut err) = (String::new(), String::new());
    let _ = child.stdout.take().unwrap().read_to_string(&mut out);
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    if !st.success() {
        return Err(format!("wrk failed ({st}): {out}{err}"));
    }
    parse_wrk(&out, pipeline)
}

fn uring_load(o: &Opts, port: u16, conns: u64, pipeline: u32) -> Result<Load, String> {
    let json = std::env::temp_dir().join(format!("c1m-http-load-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let mut child = Command::new("taskset")
        .args([
            "-c",
            o.cpus.load_cpus.as_str(),
            env!("CARGO_BIN_EXE_uring-load"),
        ])
        .args(["--proto", "http", "--path", PATH])
        .args(["--pipeline", &pipeline.to_string()])
        .args(["--host", "127.0.0.1", "--ports", &port.to_string()])
        .args(["--conns", &conns.to_string()])
        .args(["--cores", &o.cpus.load_cpus.count().to_string()])
        .args(["--duration", &o.runs.duration.to_string()])
        .args(["--warmup", &o.runs.warmup.to_string()])
        .args(["--quiet", "--allow-partial", "--json"])
        .arg(&json)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("start uring-load: {e}"))?;
    let limit = Duration::from_secs_f64(o.runs.warmup + o.runs.duration + 30.0);
    let st = common::wait_bounded(&mut child, limit, "uring-load")?;
    if !st.success() {
        return Err(format!("uring-load failed ({st})"));
    }
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    let l: Value = serde_json::from_str(&text).map_err(|e| format!("uring-load json: {e}"))?;
    let mut errors: u64 = l["errors"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let mut detail = if errors > 0 {
        format!("errors {}; ", l["errors"])
    } else {
        String::new()
    };
    let short = conns.saturating_sub(l["conns_established"].as_u64().unwrap_or(0));
    if short > 0 {
        errors += short;
        let _ = write!(detail, "{short} conns not established; ");
    }
    let lat = |k: &str| l["latency_us"][k].as_f64();
    Ok(Load {
        rps: l["throughput_rps"]
            .as_f64()
            .ok_or("uring-load json: no throughput_rps")?,
        p50: lat("p50"),
        p99: lat("p99"),
        requests: l["requests"].as_u64().unwrap_or(0),
        errors,
        error_detail: detail,
    })
}

/// What one run measured.
struct Run {
    load: Load,
    cpu_user_us_per_req: f64,
    cpu_sys_us_per_req: f64,
    busy_pct: f64,
    server_requests: u64,
}

fn run(
    o: &Opts,
    client: Client,
    kind: Server,
    conns: u64,
    pipeline: u32,
    lua: &Path,
) -> Result<Run, String> {
    let srv = Running::start(o, kind, conns)?;
    let measured = (|| {
        if client == Client::Wrk && o.runs.warmup > 0.0 {
            wrk(o, srv.port, conns, pipeline, o.runs.warmup, lua)?;
        }
        let (u0, s0) = srv.cpu();
        let t0 = Instant::now();
        let load = match client {
            Client::Wrk => wrk(o, srv.port, conns, pipeline, o.runs.duration, lua)?,
            Client::UringLoad => uring_load(o, srv.port, conns, pipeline)?,
        };
        let wall = t0.elapsed().as_secs_f64();
        let (u1, s1) = srv.cpu();
        let busy = (u1 - u0 + s1 - s0) / wall * 100.0;
        Ok::<_, String>((load, busy, srv.cpu()))
    })();
    let served = srv.stop();
    let (load, busy_pct, (user, sys)) = measured?;
    let server_requests = served?;
    if server_requests < load.requests {
        eprintln!(
            "http: warning: {} counted {server_requests} requests, {} counted {} in its window",
            kind.name(),
            client.name(),
            load.requests
        );
    }
    let per = server_requests.max(1) as f64;
    Ok(Run {
        load,
        cpu_user_us_per_req: user * 1e6 / per,
        cpu_sys_us_per_req: sys * 1e6 / per,
        busy_pct,
        server_requests,
    })
}

/// Medians over the runs (p50/p99 only where every run has one), throughput's min-max, the
/// errors summed, and each run as measured.
fn summarize(runs: &[Run]) -> Value {
    let med = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        common::median(&mut v)
    };
    let med_opt = |f: &dyn Fn(&Run) -> Option<f64>| {
        let mut v: Vec<f64> = runs.iter().filter_map(f).collect();
        (v.len() == runs.len()).then(|| common::median(&mut v))
    };
    let rps: Vec<f64> = runs.iter().map(|r| r.load.rps).collect();
    let detail: Vec<&str> = runs
        .iter()
        .map(|r| r.load.error_detail.as_str())
        .filter(|d| !d.is_empty())
        .collect();
    json!({
        "rps": med(&|r| r.load.rps),
        "rps_span": [rps.iter().cloned().fold(f64::MAX, f64::min), rps.iter().cloned().fold(0.0, f64::max)],
        "p50_us": med_opt(&|r| r.load.p50), "p99_us": med_opt(&|r| r.load.p99),
        "cpu_us_per_req": med(&|r| r.cpu_user_us_per_req + r.cpu_sys_us_per_req),
        "cpu_user_us_per_req": med(&|r| r.cpu_user_us_per_req),
        "cpu_sys_us_per_req": med(&|r| r.cpu_sys_us_per_req),
        "busy_pct": med(&|r| r.busy_pct),
        "errors": runs.iter().map(|r| r.load.errors).sum::<u64>(), "error_detail": detail,
        "runs": runs.iter().map(|r| json!({
            "rps": r.load.rps, "p50_us": r.load.p50, "p99_us": r.load.p99,
            "client_requests": r.load.requests, "server_requests": r.server_requests,
            "cpu_user_us_per_req": r.cpu_user_us_per_req, "cpu_sys_us_per_req": r.cpu_sys_us_per_req,
            "busy_pct": r.busy_pct, "errors": r.load.errors,
        })).collect::<Vec<_>>(),
    })
}

/// wrk's pipelining: each write carries N requests (N: the script's argument), the shape of
/// wrk's scripts/pipeline.lua.
const PIPELINE_LUA: &str = "init = function(args)\n  local r = {}\n  for i = 1, tonumber(args[1]) do\n    r[i] = wrk.format()\n  end\n  req = table.concat(r)\nend\n\nrequest = function()\n  return req\nend\n";

fn version(cmd: &str, arg: &str) -> String {
    let out = Command::new(cmd).arg(arg).output();
    out.map(|o| {
        let text =
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
        // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer": the first words.
        let line = text.lines().next().unwrap_or("");
        line.split(" Copyright")
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    })
    .unwrap_or_default()
}

fn main() {
    let o = opts();
    let started = Instant::now();
    let lua = std::env::temp_dir().join(format!("c1m-http-pipeline-{}.lua", std::process::id()));
    std::fs::write(&lua, PIPELINE_LUA).expect("write the wrk pipeline script");
    let fail = |e: String| -> ! {
        eprintln!("http: {e}");
        let _ = std::fs::remove_dir_all(nginx_dir());
        std::process::exit(1)
    };
    let mut answers = serde_json::Map::new();
    for kind in SERVERS {
        answers.insert(
            kind.name().into(),
            check_answer(&o, kind).unwrap_or_else(|e| fail(e)),
        );
    }
    let total = o.clients.len() * o.pipelines.len() * o.conns.len() * o.runs.reps;
    let mut points = Vec::new();
    let mut done = 0;
    for &client in &o.clients {
        for &pipeline in &o.pipelines {
            for &conns in &o.conns {
                let mut runs: [Vec<Run>; 3] = Default::default();
                for rep in 0..o.runs.reps {
                    done += 1;
                    eprintln!(
                        "http: {} {conns} conns, pipeline {pipeline}, rep {}/{} ({done}/{total}, {:.0}s)",
                        client.name(),
                        rep + 1,
                        o.runs.reps,
                        started.elapsed().as_secs_f64()
                    );
                    let mut order = SERVERS;
                    order.rotate_left(rep % SERVERS.len());
                    for kind in order {
                        let r = run(&o, client, kind, conns, pipeline, &lua)
                            .unwrap_or_else(|e| fail(e));
                        if r.load.errors > 0 {
                            eprintln!(
                                "http: warning: {} under {}: {}",
                                kind.name(),
                                client.name(),
                                r.load.error_detail
                            );
                        }
                        runs[SERVERS.iter().position(|s| *s == kind).unwrap()].push(r);
                    }
                }
                let mut p =
                    json!({ "client": client.name(), "conns": conns, "pipeline": pipeline });
                for (kind, rs) in SERVERS.iter().zip(&runs) {
                    p[kind.name()] = summarize(rs);
                }
                points.push(p);
            }
        }
    }
    let _ = std::fs::remove_file(&lua);
    let _ = std::fs::remove_dir_all(nginx_dir());
    write_results(&o, &points, &answers, started.elapsed().as_secs_f64());
}

fn ratio(p: &Value, a: &str, b: &str, key: &str) -> f64 {
    p[a][key].as_f64().unwrap_or(0.0) / p[b][key].as_f64().unwrap_or(0.0).max(1e-9)
}

fn write_results(o: &Opts, points: &[Value], answers: &serde_json::Map<String, Value>, secs: f64) {
    let cmd = if o.argv.is_empty() {
        "cargo bench --bench http".to_string()
    } else {
        format!("cargo bench --bench http -- {}", o.argv)
    };
    let (date, kernel, commit) = (common::today(), common::kernel(), common::commit());
    let (wrk_v, nginx_v) = (version("wrk", "-v"), version("nginx", "-v"));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# HTTP plaintext: io_uring and epoll engines vs nginx\n\n{date} · kernel {kernel} · commit {commit} · {} · {secs:.0} s\n\n`{cmd}`\n\n\
         `GET {PATH}` answered `200 Hello, World!` (keep-alive) by `uring-server --proto http`, `epoll-server --proto http` \
         (`--cores {}`) and nginx (`worker_processes {}`, `return 200`, no access log), each pinned to CPUs {}; clients pinned \
         to CPUs {}: wrk ({wrk_v}; {nginx_v}) and `uring-load --proto http`, closed loop, pipeline = requests written together \
         on a connection. A fresh server per run; the servers rotate order every repetition; {} repetitions of {} s after {} s \
         of warm-up, medians (throughput with min-max). CPU per request: the server's user+sys over its whole life (nginx: its \
         workers) over the requests it counted. Busy: its CPU during the measured run per wall second (100 % = one core); \
         well under 100 % per server CPU means the client set the pace. Latency is the client's; wrk's pipelined percentiles \
         are wrong (its coordinated-omission correction loses samples), so they are n/a.\n",
        common::machine(),
        o.cpus.server_cpus.count(),
        o.cpus.server_cpus.count(),
        o.cpus.server_cpus,
        o.cpus.load_cpus,
        o.runs.reps,
        o.runs.duration,
        o.runs.warmup,
    );
    for &client in &o.clients {
        let _ = writeln!(
            md,
            "## {}\n\n| conns | pipeline | req/s uring | req/s epoll | req/s nginx | uring/nginx | epoll/nginx | uring/epoll | p50 us u / e / n | p99 us u / e / n | CPU us/req u / e / n | CPU/req uring/nginx | busy % u / e / n | errors u / e / n |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            client.name()
        );
        for p in points.iter().filter(|p| p["client"] == client.name()) {
            let (u, e, n) = (&p["uring"], &p["epoll"], &p["nginx"]);
            let rps = |v: &Value| {
                format!(
                    "{:.0} ({:.0}-{:.0})",
                    v["rps"].as_f64().unwrap(),
                    v["rps_span"][0].as_f64().unwrap(),
                    v["rps_span"][1].as_f64().unwrap()
                )
            };
            let three = |k: &str, prec: usize| {
                [u, e, n]
                    .iter()
                    .map(|v| {
                        v[k].as_f64()
                            .map_or("n/a".to_string(), |x| format!("{x:.prec$}"))
                    })
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.2} | {} | {} / {} / {} |",
                p["conns"],
                p["pipeline"],
                rps(u),
                rps(e),
                rps(n),
                ratio(p, "uring", "nginx", "rps"),
                ratio(p, "epoll", "nginx", "rps"),
                ratio(p, "uring", "epoll", "rps"),
                three("p50_us", 0),
                three("p99_us", 0),
                three("cpu_us_per_req", 2),
                ratio(p, "uring", "nginx", "cpu_us_per_req"),
                three("busy_pct", 0),
                u["errors"],
                e["errors"],
                n["errors"],
            );
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "## The answers\n\n| server | bytes | status | headers |\n|---|---|---|---|"
    );
    for (name, a) in answers {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            a["bytes"],
            a["status_line"].as_str().unwrap_or(""),
            a["headers"]
                .as_array()
                .map(|h| h
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    println!("{md}");
    let base = format!("{}/http-{date}-{kernel}", o.output.out);
    std::fs::create_dir_all(&o.output.out).unwrap();
    std::fs::write(format!("{base}.md"), &md).unwrap();
    let doc = json!({
        "bench": "http", "date": date, "kernel": kernel, "commit": commit, "machine": common::machine(),
        "command": cmd, "server_cpus": o.cpus.server_cpus.as_str(), "load_cpus": o.cpus.load_cpus.as_str(), "reps": o.runs.reps,
        "duration_s": o.runs.duration, "warmup_s": o.runs.warmup, "wrk": wrk_v, "nginx": nginx_v,
        "answers": answers, "points": points,
    });
    std::fs::write(
        format!("{base}.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    eprintln!("wrote {base}.md and .json");
}
