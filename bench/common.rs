//! What the benches share: their common flags and the parsing of them (clap), starting
//! pinned servers, reading a process's CPU time, and the facts every recorded result carries
//! (machine, kernel, commit, command).

#![allow(dead_code)] // each bench uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

/// Parses a bench's flags with its clap parser `T`, from its own arguments: cargo runs a
/// `harness = false` bench with a `--bench` flag of its own, which is dropped first (so
/// `cargo bench --bench X -- --help` works). `adjust` may change the command first (a shared
/// flag's default). Returns the flags and the arguments, for the recorded command.
pub fn parse<T: Parser>(adjust: impl FnOnce(clap::Command) -> clap::Command) -> (T, Vec<String>) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut cmd = adjust(T::command());
    let bin = std::env::args().next().unwrap_or_default();
    let opts = cmd
        .try_get_matches_from_mut(std::iter::once(bin).chain(args.iter().cloned()))
        .and_then(|m| T::from_arg_matches(&m))
        .map_err(|e| e.format(&mut cmd))
        .unwrap_or_else(|e| e.exit());
    (opts, args)
}

/// Where every bench writes its results.
#[derive(clap::Args, Debug, Clone)]
pub struct Output {
    /// The directory the results (.md, .json) are written to
    #[arg(long, value_name = "DIR", default_value = "bench/results")]
    pub out: String,
}

/// The CPUs of the benches that run a server and a load against it.
#[derive(clap::Args, Debug, Clone)]
pub struct Cpus {
    /// The CPUs the server is pinned to (a taskset list: 0, 0-3, 0,2)
    #[arg(long, value_name = "LIST", default_value = "0")]
    pub server_cpus: CpuList,
    /// The CPUs the load is pinned to (a taskset list)
    #[arg(long, value_name = "LIST", default_value = "1")]
    pub load_cpus: CpuList,
}

/// How long the benches that repeat timed runs measure, and how often.
#[derive(clap::Args, Debug, Clone)]
pub struct Runs {
    /// Seconds measured in each run
    #[arg(long, value_name = "S", default_value = "5", value_parser = positive)]
    pub duration: f64,
    /// Seconds of warm-up before each run is measured
    #[arg(long, value_name = "S", default_value = "1")]
    pub warmup: f64,
    /// Repetitions of each run
    #[arg(long, value_name = "N", default_value = "3",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub reps: usize,
}

/// A number above 0 (seconds, a rate).
pub fn positive(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x > 0.0 => Ok(x),
        _ => Err(format!("`{v}` is not a number above 0")),
    }
}

/// A CPU list as taskset takes it (`1`, `0-3`, `0,2`): kept as written, to pass on and
/// record, and as the CPUs it names.
#[derive(Debug, Clone)]
pub struct CpuList {
    spec: String,
    cpus: Vec<usize>,
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(spec: &str) -> Result<CpuList, String> {
        let bad = || format!("bad CPU list `{spec}` (1, 0-3, 0,2)");
        let mut cpus = Vec::new();
        for part in spec.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (usize, usize) = (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            );
            // CPU_SETSIZE: the most CPUs an affinity mask here can name.
            if a > b || b >= libc::CPU_SETSIZE as usize {
                return Err(bad());
            }
            cpus.extend(a..=b);
        }
        Ok(CpuList {
            spec: spec.to_string(),
            cpus,
        })
    }
}

impl std::fmt::Display for CpuList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec)
    }
}

impl CpuList {
    /// The list as written.
    pub fn as_str(&self) -> &str {
        &self.spec
    }

    /// The CPUs it names, in the order written.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// How many CPUs it names.
    pub fn count(&self) -> usize {
        self.cpus.len()
    }
}

pub struct Proc {
    pub child: Child,
    /// What the process wrote on stderr (its first `STDERR_KEPT` bytes).
    stderr: Arc<Mutex<String>>,
}

/// How much of a server's stderr is kept to show when it fails.
const STDERR_KEPT: usize = 64 * 1024;

impl Proc {
    /// Starts `bin args` pinned to the CPUs `cpus` (a taskset list) and waits for its
    /// "listening on" line.
    pub fn server_on(cpus: &str, bin: &str, args: &[&str]) -> Proc {
        Proc::try_server_on(cpus, bin, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `server_on` that returns an error, with what the server wrote on stderr, when it
    /// exits before its "listening on" line or is not ready within 20 s (then it is killed).
    pub fn try_server_on(cpus: &str, bin: &str, args: &[&str]) -> Result<Proc, String> {
        let mut child = Command::new("taskset")
            .args(["-c", cpus, bin])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start {bin} (taskset from util-linux): {e}"))?;
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut s = stderr.lock().unwrap();
                    if s.len() < STDERR_KEPT {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut p = Proc { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with("listening on") => break,
                Ok(_) => {}
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => "not ready within 20 s".to_string(),
                        RecvTimeoutError::Disconnected => "exited before listening".to_string(),
                    };
                    // By PID: a child not reaped yet.
                    let _ = p.child.kill();
                    let st = p.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    // The stderr reader ends with the process; give it a moment to catch up.
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(format!("{bin} {why} ({st}); its stderr:\n{}", p.stderr()));
                }
            }
        }
        std::thread::spawn(move || for _ in rx {});
        Ok(p)
    }

    /// What the process has written on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// CPU seconds (user, sys) used so far by the process and its threads.
    pub fn cpu(&self) -> (f64, f64) {
        cpu_of(self.child.id())
    }

    pub fn stop(mut self) {
        // By PID: a child this bench has not reaped yet, so the PID is still its.
        let _ = c1m::sys::kill(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }

    /// `stop` with a bound: SIGTERM, then up to `limit` for the server to exit (ours drain
    /// for `--shutdown-timeout`, 5 s by default); past it SIGKILL, and the error says so.
    pub fn stop_within(mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let _ = c1m::sys::kill(self.child.id(), libc::SIGTERM);
        wait_bounded(&mut self.child, limit, "server")
    }
}

/// Waits up to `limit` for `child`; past it, kills it (SIGKILL, by its PID) and says so.
/// Starts `cmd` (its stderr piped), waits for it within `limit` as `wait_bounded` does, and
/// returns how it exited with what it said on stderr.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
    what: &str,
) -> Result<(std::process::ExitStatus, String), String> {
    use std::io::Read as _;
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("start {what}: {e}"))?;
    let mut err = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let st = wait_bounded(&mut child, limit, what)?;
    Ok((st, reader.join().unwrap_or_default()))
}

pub fn wait_bounded(
    child: &mut Child,
    limit: Duration,
    what: &str,
) -> Result<std::process::ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().map_err(|e| format!("{what}: wait: {e}"))? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what}: still running after {limit:?}, killed (pid {})",
                child.id()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Open file descriptors of process `pid` (its /proc/PID/fd entries); 0 once it is gone.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// (user, sys) CPU seconds of process `pid`, from /proc/PID/stat.
pub fn cpu_of(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let hz = clock_ticks();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / hz;
    (get(11), get(12)) // utime, stime (fields 14 and 15 of stat)
}

/// The unit of /proc's CPU times: ticks per second (USER_HZ).
fn clock_ticks() -> f64 {
    c1m::sys::clock_ticks_per_sec() as f64
}

/// Seconds the CPUs `cpus` were idle (idle and iowait time in /proc/stat, summed): unlike its
/// busy times, which are sampled at each tick, the kernel measures these exactly when the
/// tick stops in idle (NO_HZ).
pub fn cpus_idle(cpus: &[usize]) -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let v: Vec<f64> = f.filter_map(|v| v.parse().ok()).collect();
            // user nice system idle iowait ...
            (cpus.contains(&cpu) && v.len() >= 5).then(|| v[3] + v[4])
        })
        .sum();
    ticks / clock_ticks()
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn commit() -> String {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output();
    let dirty = Command::new("git")
        // Only code counts: a README edited while a bench runs leaves the measured build alone.
        .args(["status", "--porcelain", "--untracked-files=no", "--"])
        .args(["src", "bench/*.rs", "Cargo.toml", "Cargo.lock"])
        .output();
    let c = out
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match dirty {
        Ok(d) if !d.stdout.is_empty() => format!("{c}-dirty"),
        _ => c,
    }
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0);
    format!("{cpus} cores, {} GiB", mem / 1024 / 1024)
}

pub fn today() -> String {
    let out = Command::new("date").arg("+%Y-%m-%d").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// PIDs of a process and its children (the Reactor's workers, nginx's, the fork model's),
/// whichever of its threads started them.
pub fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().filter_map(Result::ok) {
        let kids = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(
            kids.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    all
}

/// A field of /proc/PID/status in its unit (kB for memory), summed over `pids` (and, for
/// per-thread counters, over each process's threads).
pub fn status_sum(pids: &[u32], field: &str, per_thread: bool) -> u64 {
    let read = |path: String| -> u64 {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    pids.iter()
        .map(|pid| {
            if per_thread {
                std::fs::read_dir(format!("/proc/{pid}/task"))
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .map(|t| read(format!("{}/status", t.path().display())))
                            .sum()
                    })
                    .unwrap_or(0)
            } else {
                read(format!("/proc/{pid}/status"))
            }
        })
        .sum()
}

/// (user, sys) CPU seconds of the processes `pids`, summed.
pub fn cpu_of_all(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .map(|&p| cpu_of(p))
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// `count` consecutive ports on 127.0.0.1 that are free now, as a range `A-B` for `--ports`;
/// the base is picked at random, so runs one after the other rarely meet the previous run's
/// sockets in TIME_WAIT.
pub fn free_ports(count: usize) -> String {
    loop {
        let base = 30_000 + (std::process::id() as usize * 7 + rand_ish()) % 20_000;
        let ok = (base..base + count)
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p as u16)).is_ok());
        if ok {
            return format!("{}-{}", base, base + count - 1);
        }
    }
}

fn rand_ish() -> usize {
    Instant::now().elapsed().subsec_nanos() as usize
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as usize
}

/// nginx's request counter (stub_status), on a location of its own off the measured path.
pub const NGINX_STATUS_PATH: &str = "/c1m-stub-status";

/// The connections an nginx worker holds at most once reuseport has spread them: each worker
/// is bound by RLIMIT_NOFILE (20000 here, and without CAP_SYS_RESOURCE nginx cannot raise
/// it), and the spread is uneven, hence the slack.
const NGINX_CONNS_PER_WORKER: u64 = 16_000;

/// nginx's configuration: `workers` worker processes, no access log, keep-alive for the whole
/// run, `return 200 "Hello, World!"` on every path but the status one, and 20000 connections
/// per worker, which RLIMIT_NOFILE's 20000 here allows.
fn nginx_conf(dir: &Path, ports: &[u16], workers: usize) -> String {
    let d = dir.display();
    let listen: String = ports
        .iter()
        .map(|p| format!("    listen 127.0.0.1:{p} reuseport backlog=65535;\n"))
        .collect();
    format!(
        "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 20000; }}\nhttp {{\n  access_log off;\n  \
         keepalive_requests 1000000;\n  keepalive_timeout 75s;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  server {{\n{listen}    \
         location / {{ default_type text/plain; return 200 \"Hello, World!\"; }}\n    \
         location = {NGINX_STATUS_PATH} {{ stub_status; }}\n  }}\n}}\n"
    )
}

/// Starts nginx pinned to `cpus` (a taskset list) with one worker per CPU there (more where
/// `conns` need them, nginx's own way past RLIMIT_NOFILE), its configuration, pid file and
/// logs in `dir`, serving `ports`; returns once every worker is up and the first port
/// accepts: the master and the workers' PIDs (the processes whose CPU counts). On failure
/// nothing is left running and the error carries nginx's error log.
pub fn start_nginx(
    cpus: &CpuList,
    dir: &Path,
    ports: &[u16],
    conns: u64,
) -> Result<(Child, Vec<u32>), String> {
    let port = ports[0];
    let workers = cpus
        .count()
        .max(conns.div_ceil(NGINX_CONNS_PER_WORKER) as usize);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, ports, workers))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut child = Command::new("taskset")
        .args(["-c", cpus.as_str(), "nginx", "-c"])
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start nginx (apt install nginx): {e}"))?;
    // Ready once every worker is up and the port accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fam = family(child.id());
        if fam.len() > workers && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((child, fam[1..].to_vec()));
        }
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() >= deadline {
            if exited.is_none() {
                // By PID: the master, not reaped yet, and the workers it started.
                for pid in fam.iter().rev() {
                    let _ = c1m::sys::kill(*pid, libc::SIGKILL);
                }
                let _ = child.wait();
            }
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            return Err(format!("nginx did not come up on port {port}: {log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
