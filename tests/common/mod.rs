//! Test harness: start the real server binaries on loopback (127.0.0.1 or ::1), wait for
//! their ready line, stop them by PID with SIGTERM, read their `--stats-json`; run the real
//! `uring-load`.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use c1m::uring::probe::{self, Need};
use serde_json::Value;

/// Whether `what` is installed (the shell command `check` succeeds); outside CI its absence
/// skips the test that asks, with a message; in CI (which installs it with `apt-get install
/// PACKAGES`) it fails.
pub fn installed(check: &str, what: &str, packages: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", check])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is not installed: .ci/run installs it (apt-get install {packages})"
        );
        eprintln!("SKIPPED: {what} is not installed (apt-get install {packages})");
    }
    found
}

/// Whether this kernel has `need`; where it does not, says that `test` is skipped and why.
pub fn kernel_has(need: Need, test: &str) -> bool {
    let has = probe::has(need);
    if !has {
        eprintln!("skipped {test}: needs {}", need.describe());
    }
    has
}

/// The servers under test; every test of both runs as one case per engine (`per_engine!`).
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Uring,
    Epoll,
}

/// The address family a case runs over, on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// 127.0.0.1 or ::1.
    pub fn loopback(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::from(Ipv4Addr::LOCALHOST),
            Family::V6 => IpAddr::from(Ipv6Addr::LOCALHOST),
        }
    }
}

/// What one case runs against: an engine over one family. An `Engine` alone is IPv4.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub engine: Engine,
    pub family: Family,
}

impl Target {
    /// The server's `--host`, the address clients connect to and uring-load's `--host`.
    pub fn host(self) -> IpAddr {
        self.family.loopback()
    }

    pub fn addr(self, port: u16) -> SocketAddr {
        SocketAddr::new(self.host(), port)
    }
}

impl From<Engine> for Target {
    fn from(engine: Engine) -> Target {
        Target {
            engine,
            family: Family::V4,
        }
    }
}

impl fmt::Display for Target {
    /// "Uring", or "Uring over IPv6": what a failure message names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            Family::V4 => write!(f, "{:?}", self.engine),
            Family::V6 => write!(f, "{:?} over IPv6", self.engine),
        }
    }
}

/// One `#[test]` per engine for each test body `fn NAME(engine: Engine)` named:
/// `per_engine!(NAME)` adds `mod NAME { #[test] fn uring() .. #[test] fn epoll() .. }`
/// beside the body, so a failure names its engine (`NAME::epoll`) and the other engine's
/// case still runs. `per_engine!(ipv4_and_ipv6: NAME)`, for a body `fn NAME(t: Target)`,
/// adds the IPv6 cases too: `NAME::uring`, `NAME::epoll`, `NAME::uring_v6`, `NAME::epoll_v6`.
#[allow(unused_macros)] // as with dead code: not every test binary has such tests
macro_rules! per_engine {
    (ipv4_and_ipv6: $($case:ident),+ $(,)?) => {
        $(
            mod $case {
                $crate::common::per_engine!(
                    @cases $case: uring Uring V4, epoll Epoll V4, uring_v6 Uring V6, epoll_v6 Epoll V6
                );
            }
        )+
    };
    (@cases $case:ident: $($name:ident $engine:ident $family:ident),+) => {
        $(
            #[test]
            fn $name() {
                super::$case($crate::common::Target {
                    engine: $crate::common::Engine::$engine,
                    family: $crate::common::Family::$family,
                })
            }
        )+
    };
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[test]
                fn uring() {
                    super::$case($crate::common::Engine::Uring)
                }

                #[test]
                fn epoll() {
                    super::$case($crate::common::Engine::Epoll)
                }
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use per_engine;

/// For a test of one engine's own machinery, a body `fn NAME(t: Target)`: `per_family!(Uring:
/// NAME)` adds `NAME::uring` and `NAME::uring_v6`.
#[allow(unused_macros)]
macro_rules! per_family {
    (Uring: $($case:ident),+ $(,)?) => {
        $(
            mod $case {
                $crate::common::per_engine!(@cases $case: uring Uring V4, uring_v6 Uring V6);
            }
        )+
    };
}
#[allow(unused_imports)]
pub(crate) use per_family;

impl Engine {
    pub fn binary(self) -> &'static str {
        match self {
            Engine::Uring => env!("CARGO_BIN_EXE_uring-server"),
            Engine::Epoll => env!("CARGO_BIN_EXE_epoll-server"),
        }
    }
}

static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

/// `n` ports free on both loopback addresses, 127.0.0.1 and ::1, as a comma list the servers
/// and uring-load accept. Blocks are spread by PID and call so that parallel tests do not meet.
pub fn free_ports(n: usize) -> String {
    loop {
        let block = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
        let base = 20_000 + (std::process::id() % 97) * 400 + block * 61 % 30_000;
        let ports: Vec<u16> = (0..n as u32).map(|i| (base + i) as u16).collect();
        let all_free = ports.iter().all(|p| {
            [Family::V4, Family::V6]
                .iter()
                .all(|f| TcpListener::bind(SocketAddr::new(f.loopback(), *p)).is_ok())
        });
        if all_free {
            return ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",");
        }
    }
}

pub fn first_port(ports: &str) -> u16 {
    ports.split(',').next().unwrap().parse().unwrap()
}

pub struct Server {
    child: Child,
    pub target: Target,
    pub ports: String,
    pub stats_path: PathBuf,
    pub stderr: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the engine on the target's loopback address (an `Engine` alone: 127.0.0.1) with
    /// `extra` flags; panics unless it is ready within 20 s.
    pub fn start(target: impl Into<Target>, ports: &str, extra: &[&str]) -> Server {
        let target = target.into();
        Server::spawn(Command::new(target.engine.binary()), target, ports, extra)
    }

    /// As `start`, under an RLIMIT_NOFILE (soft and hard) of `nofile`, which also caps its ring tables.
    pub fn start_with_nofile(
        target: impl Into<Target>,
        ports: &str,
        extra: &[&str],
        nofile: u32,
    ) -> Server {
        let target = target.into();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
            target.engine.binary(),
        ]);
        Server::spawn(cmd, target, ports, extra)
    }

    /// As `start` (or `start_with_nofile` with `nofile`), with `env` added to its environment.
    pub fn start_with_env(
        engine: Engine,
        ports: &str,
        extra: &[&str],
        nofile: Option<u32>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Server {
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    engine.binary(),
                ]);
                c
            }
            None => Command::new(engine.binary()),
        };
        cmd.envs(env.iter().copied());
        Server::spawn(cmd, engine.into(), ports, extra)
    }

    /// `model-server --model MODEL` on `family`'s loopback address with `extra` flags (its
    /// `target.engine` is unused: nothing here starts it by engine).
    pub fn start_model(model: &str, family: Family, ports: &str, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_model-server"));
        cmd.args(["--model", model]);
        let target = Target {
            engine: Engine::Epoll,
            family,
        };
        Server::spawn(cmd, target, ports, extra)
    }

    fn spawn(mut cmd: Command, target: Target, ports: &str, extra: &[&str]) -> Server {
        let stats_path = std::env::temp_dir().join(format!(
            "c1m-test-{}-{}.json",
            std::process::id(),
            NEXT_BLOCK.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&stats_path);
        let mut child = cmd
            .arg("--host")
            .arg(target.host().to_string())
            .args(["--ports", ports, "--stats-json"])
            .arg(&stats_path)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the server binary");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (etx, erx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = etx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("listening on ") => break,
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(100));
                    let errs: Vec<String> = erx.try_iter().collect();
                    panic!("server not ready within 20 s; stderr: {errs:?}");
                }
            }
        }
        Server {
            child,
            target,
            ports: ports.to_string(),
            stats_path,
            stderr: erx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `uring-load` against this server's ports over its family (see `load`).
    pub fn load(&self, extra: &[&str]) -> (i32, Value) {
        load_at(self.target.host(), &self.ports, extra)
    }

    /// PIDs of the server's child processes (the Reactor's workers).
    pub fn children(&self) -> Vec<u32> {
        let path = format!("/proc/{0}/task/{0}/children", self.child.id());
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect()
    }

    /// Waits up to `limit` for a stderr line containing `needle`; returns it.
    pub fn stderr_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Ok(line) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// Sends `sig` by PID: a child this test started and has not reaped, so the PID is its.
    pub fn signal(&self, sig: i32) {
        c1m::sys::kill(self.child.id(), sig)
            .unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.child.id()));
    }

    /// Waits up to `limit` for the server to exit; kills it and panics past that.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait for exit 0 within `limit`, and return its stats JSON.
    pub fn stop_within(&mut self, limit: Duration) -> Value {
        self.signal(libc::SIGTERM);
        let st = self.wait(limit);
        assert!(st.success(), "server exited with {st}");
        let text = std::fs::read_to_string(&self.stats_path).expect("stats json written");
        let _ = std::fs::remove_file(&self.stats_path);
        serde_json::from_str(&text).expect("stats json parses")
    }

    pub fn stop(mut self) -> Value {
        self.stop_within(Duration::from_secs(10))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `uring-load` against `ports` on 127.0.0.1 with `extra` flags; returns (exit code, JSON
/// report).
pub fn load(ports: &str, extra: &[&str]) -> (i32, Value) {
    load_at(Family::V4.loopback(), ports, extra)
}

fn load_at(host: IpAddr, ports: &str, extra: &[&str]) -> (i32, Value) {
    let json = std::env::temp_dir().join(format!(
        "c1m-load-{}-{}.json",
        std::process::id(),
        NEXT_BLOCK.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_uring-load"))
        .arg("--host")
        .arg(host.to_string())
        .args(["--ports", ports, "--quiet", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .expect("run uring-load");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "uring-load wrote no report; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&text).unwrap(),
    )
}

/// The unsigned number at a dotted path of a JSON value.
pub fn u(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {v}"))
}

/// `n` pseudo-random bytes (xorshift), the same for the same seed.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
