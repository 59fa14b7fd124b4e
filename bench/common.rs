//! What the benches share: starting pinned servers, reading a process's CPU time, and the
//! facts every recorded result carries (machine, kernel, commit, command).

#![allow(dead_code)] // each bench uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Starts `bin args` pinned to the CPUs `cpus` (a taskset list) and waits for its
    /// "listening on" line.
    pub fn server_on(cpus: &str, bin: &str, args: &[&str]) -> Proc {
        let mut child = Command::new("taskset")
            .args(["-c", cpus, bin])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server (taskset from util-linux)");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with("listening on") => break,
                Ok(_) => {}
                Err(_) => panic!("{bin} not ready"),
            }
        }
        std::thread::spawn(move || for _ in rx {});
        Proc { child }
    }

    /// CPU seconds (user, sys) used so far by the process and its threads.
    pub fn cpu(&self) -> (f64, f64) {
        cpu_of(self.child.id())
    }

    pub fn stop(mut self) {
        // SAFETY: kill(2) on the PID of a child this bench started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// `stop` with a bound: SIGTERM, then up to `limit` for the server to exit (ours drain
    /// for `--shutdown-timeout`, 5 s by default); past it SIGKILL, and the error says so.
    pub fn stop_within(mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        // SAFETY: kill(2) on the PID of a child this bench started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_bounded(&mut self.child, limit, "server")
    }
}

/// Waits up to `limit` for `child`; past it, kills it (SIGKILL, by its PID) and says so.
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

/// Pins the calling thread, and every thread it starts afterwards, to the CPUs of a taskset
/// list (`1`, `0-3`, `0,2`): what `taskset -c` does for a child, for the bench itself.
pub fn pin_self(cpus: &str) -> std::io::Result<()> {
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("bad CPU list `{cpus}`"),
        )
    };
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for part in cpus.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a > b || b >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, the bit count of `set` (checked above).
        (a..=b).for_each(|cpu| unsafe { libc::CPU_SET(cpu, &mut set) });
    }
    // SAFETY: the pointer is to a live local cpu_set_t and the size is its size; pid 0 is
    // the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// (user, sys) CPU seconds of process `pid`, from /proc/PID/stat.
pub fn cpu_of(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / hz;
    (get(11), get(12)) // utime, stime (fields 14 and 15 of stat)
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

/// PIDs of a process and its children (the Reactor's workers).
pub fn family(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    all.extend(
        kids.split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok()),
    );
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

/// A comma list of values for `flag`; a bad one stops the bench with the flag's name.
pub fn list<T: std::str::FromStr>(v: &str, flag: &str) -> Vec<T> {
    v.split(',')
        .map(|x| {
            x.parse()
                .unwrap_or_else(|_| panic!("{flag}: bad list `{v}`"))
        })
        .collect()
}

/// How many CPUs a taskset list (`0`, `0-3`, `0,2`) names.
pub fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|p| match p.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// The bench's own arguments (cargo adds `--bench`); `--help` prints `usage` and exits.
pub fn args(usage: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{usage}");
        std::process::exit(0);
    }
    args
}
