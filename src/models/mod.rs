//! The notes' server models (`model-server --model NAME`), each a module whose loop fits
//! on one screen, serving echo (`echo.rs`) with the same counters, ready line, stats line
//! and summary as the two servers. This module owns what they share: planning (in
//! `plan::plan_model`), the listeners, the stop, the supervisor and the summary.
//! `epoll-et` and `uring` are the project's own servers, run in this process's place.

pub mod echo;
pub mod stats;

mod epoll_lt;
mod fork;
mod half_sync;
mod iterative;
mod leader_followers;
mod poll;
mod pool;
mod posix_aio;
mod select;
mod sigio;
mod sim_proactor;
mod table;
mod thread;

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread as std_thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cli::{Model, ModelArgs};
use crate::error::{Error, Result};
use crate::plan::{self, ModelPlan, ModelRequest};
use crate::server::{out, say};
use crate::stats::{self as server_stats, Counters, Summary};
use crate::sys::{self, limits::HostLimits, limits::TaskLimits};
use stats::{Field, Stats};

/// What a model runs with.
pub struct Ctx {
    pub plan: ModelPlan,
    /// One listener per port: non-blocking for the models that wait for readiness
    /// (`nonblocking`), blocking for the others.
    pub listeners: Vec<OwnedFd>,
    pub stats: Arc<Stats>,
    pub stop: Arc<Stop>,
    /// Worker threads of the pool models.
    pub threads: usize,
    /// The stack of each thread a model starts, in bytes.
    pub stack_bytes: usize,
}

impl Ctx {
    /// A connection was accepted: whether it may stay (false: `--max-conns` are open, and
    /// it is counted as over the cap and closed; the caller drops it).
    pub fn admit(&self) -> bool {
        self.stats.add(Field::Accepted, 1);
        let open = self
            .stats
            .get(Field::Accepted)
            .saturating_sub(self.stats.get(Field::Closed));
        if open > self.plan.max_conns {
            self.stats.add(Field::OverCap, 1);
            self.stats.add(Field::Closed, 1);
            return false;
        }
        true
    }

    /// A connection admitted has closed, with the error it ended in, if any.
    pub fn closed(&self, err: Option<&io::Error>) {
        if err.is_some() {
            self.stats.add(Field::ConnErrors, 1);
        }
        self.stats.add(Field::Closed, 1);
    }

    /// An accept that failed: EAGAIN and EINTR are no connection; ECONNABORTED, EMFILE and
    /// the like are counted as refused. Returns the error unless it is one of those.
    pub fn accept_failed(&self, e: io::Error) -> io::Result<()> {
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(()),
            Some(
                libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM,
            ) => {
                self.stats.add(Field::Refused, 1);
                Ok(())
            }
            _ => Err(e),
        }
    }
}

/// The blocking models' wait for clients (iterative, fork, thread): poll(2) over the stop
/// eventfd, the model's own `extra` fds and the listeners, then a blocking accept on each
/// listener with a client, and `ctx.admit`. `on_extra(i)` runs when extra fd i is readable,
/// `each` with every connection admitted; it returns at the stop (or an error either
/// returns). The notes' servers have one port and block in accept; poll says which of
/// several ports has the client.
pub fn accept_blocking(
    ctx: &Ctx,
    extra: &[RawFd],
    mut on_extra: impl FnMut(usize) -> io::Result<()>,
    mut each: impl FnMut(OwnedFd) -> io::Result<()>,
) -> io::Result<()> {
    let mut waits: Vec<libc::pollfd> = std::iter::once(ctx.stop.fd())
        .chain(extra.iter().copied())
        .chain(ctx.listeners.iter().map(|l| l.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let listeners = 1 + extra.len();
    loop {
        ctx.stats.call();
        sys::poll(&mut waits, -1)?;
        if ctx.stop.is_set() {
            return Ok(());
        }
        for i in (1..listeners).filter(|&i| waits[i].revents != 0) {
            on_extra(i - 1)?;
        }
        for ready in waits[listeners..].iter().filter(|w| w.revents != 0) {
            ctx.stats.call();
            match sys::accept(ready.fd) {
                Ok(conn) if ctx.admit() => each(conn)?,
                Ok(_) => {}
                Err(e) => ctx.accept_failed(e)?,
            }
        }
    }
}

/// How a model is told to stop, by SIGINT or SIGTERM: a flag, an eventfd that becomes
/// readable (for the models that wait in select, poll or epoll), and hooks the model
/// registers for what those cannot wake (a blocked accept or read, a signal wait).
pub struct Stop {
    stopping: AtomicBool,
    wake: OwnedFd,
    hooks: Mutex<Vec<Box<dyn Fn() + Send>>>,
}

impl Stop {
    fn new() -> io::Result<Stop> {
        Ok(Stop {
            stopping: AtomicBool::new(false),
            wake: sys::eventfd()?,
            hooks: Mutex::new(Vec::new()),
        })
    }

    pub fn is_set(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Readable once the model must stop (non-blocking; never read, so it stays readable).
    pub fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Calls `hook` when the model must stop (at once if it already must).
    pub fn on_stop(&self, hook: Box<dyn Fn() + Send>) {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_set() {
            hook();
        }
        hooks.push(hook);
    }

    fn trigger(&self) {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        self.stopping.store(true, Ordering::Release);
        let _ = sys::eventfd_wake(self.wake.as_raw_fd());
        for h in hooks.iter() {
            h();
        }
    }
}

/// Whether the model waits for readiness on non-blocking listeners.
fn nonblocking(model: Model) -> bool {
    !matches!(
        model,
        Model::Iterative | Model::Fork | Model::Thread | Model::PosixAio
    )
}

fn run_model(model: Model, ctx: Ctx) -> io::Result<()> {
    match model {
        Model::Iterative => iterative::run(ctx),
        Model::Fork => fork::run(ctx),
        Model::Thread => thread::run(ctx),
        Model::Select => select::run(ctx),
        Model::Poll => poll::run(ctx),
        Model::EpollLt => epoll_lt::run(ctx),
        Model::Sigio => sigio::run(ctx),
        Model::HalfSyncHalfReactor => half_sync::run(ctx),
        Model::LeaderFollowers => leader_followers::run(ctx),
        Model::SimProactor => sim_proactor::run(ctx),
        Model::PosixAio => posix_aio::run(ctx),
        Model::EpollEt | Model::Uring => unreachable!("run by exec_server"),
    }
}

/// What model-server writes at exit (and `--stats-json`): the servers' summary, plus what
/// tells the models apart.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub model: &'static str,
    pub plan: String,
    /// The most threads, and processes, seen at once (sampled each second).
    pub threads_max: u64,
    pub processes_max: u64,
    /// Context switches of every thread and reaped child.
    pub context_switches: u64,
    /// Times sigio's real-time signal queue overflowed (SIGIO came) and every fd was polled
    /// instead; 0 for the other models.
    pub overflows: u64,
    #[serde(flatten)]
    pub summary: Summary,
}

/// Runs `--model` until SIGINT or SIGTERM (or, for `epoll-et` and `uring`, becomes that
/// server).
pub fn run(args: &ModelArgs) -> Result<ModelSummary> {
    let Some(model) = args.model else {
        return Err(Error::BadFlag("--model is needed".into()));
    };
    if matches!(model, Model::EpollEt | Model::Uring) {
        return Err(exec_server(model, args));
    }
    if !(args.shutdown_timeout.is_finite() && args.shutdown_timeout >= 0.0) {
        return Err(Error::BadFlag(format!(
            "--shutdown-timeout must be a number of seconds, not {}",
            args.shutdown_timeout
        )));
    }
    if args.threads == 0 {
        return Err(Error::BadFlag("--threads must be at least 1".into()));
    }
    if args.stack_kib < 16 {
        return Err(Error::BadFlag(
            "--stack-kib must be at least 16 (Rust's threads need it)".into(),
        ));
    }
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    let mut cpus = sys::allowed_cpus().map_err(|e| Error::io("sched_getaffinity", e))?;
    if let Some(n) = args.cores {
        if n == 0 || n > cpus.len() {
            return Err(Error::BadFlag(format!(
                "--cores {n}: this process may use {} cores",
                cpus.len()
            )));
        }
        cpus.truncate(n);
        sys::set_cpus(&cpus).map_err(|e| Error::io("sched_setaffinity", e))?;
    }
    let limits = HostLimits::read().map_err(|e| Error::io("reading host limits", e))?;
    let tasks = TaskLimits::read().map_err(|e| Error::io("reading task limits", e))?;
    let plan = plan::plan_model(
        &ModelRequest {
            model,
            max_conns: args.max_conns,
            ports: args.ports.len(),
            threads: args.threads,
            stack_kib: args.stack_kib,
        },
        &limits,
        &tasks,
    )?;
    let mut listeners = Vec::with_capacity(args.ports.len());
    for port in args.ports.ports() {
        let addr = SocketAddr::new(args.host, *port);
        let in_use = |e| crate::server::bind_error(addr, e);
        if sys::port_in_use(addr).map_err(in_use)? {
            return Err(Error::PortInUse(addr));
        }
        listeners.push(
            sys::reuseport_listener(addr, nonblocking(model), sys::LISTEN_BACKLOG)
                .map_err(|e| crate::server::bind_error(addr, e))?,
        );
    }
    say(format!("model-server: {}", plan.describe()));
    let started = Instant::now();
    let stats = Arc::new(Stats::new().map_err(|e| Error::io("mapping the counters", e))?);
    let stop = Arc::new(Stop::new().map_err(|e| Error::io("eventfd", e))?);
    let ctx = Ctx {
        plan: plan.clone(),
        listeners,
        stats: stats.clone(),
        stop: stop.clone(),
        threads: args.threads,
        stack_bytes: args.stack_kib * 1024,
    };
    let handle = std_thread::Builder::new()
        .name(model.name().into())
        .spawn(move || run_model(model, ctx))
        .map_err(|e| Error::io("spawning the model's thread", e))?;
    let host = match args.host {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    out(format!(
        "listening on {host}:{} ({} ports), model {model} on cores {}",
        args.ports,
        args.ports.len(),
        plan::compact_list(&cpus)
    ));
    let _ = io::stdout().flush();
    let (threads_max, processes_max, failure) = supervise(args, &stats, &stop, &handle, started);
    let failure = failure.or_else(|| finish(handle, model, args));
    let (user, sys_) = sys::cpu_times(false);
    let (cuser, csys) = sys::cpu_times(true);
    let summary = ModelSummary {
        model: model.name(),
        plan: plan.describe(),
        threads_max,
        processes_max,
        context_switches: sys::context_switches(false) + sys::context_switches(true),
        overflows: stats.get(Field::Overflows),
        summary: Summary::new(
            model.name(),
            started,
            vec![stats.counters()],
            (user + cuser, sys_ + csys),
            Vec::new(),
        ),
    };
    out(summary.summary.human());
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Prints the stats line each second (`--stats`) and samples the threads and processes
/// until a stop signal, or until the model ends on its own (an error); then stops it.
fn supervise(
    args: &ModelArgs,
    stats: &Stats,
    stop: &Stop,
    handle: &std_thread::JoinHandle<io::Result<()>>,
    started: Instant,
) -> (u64, u64, Option<Error>) {
    let (mut threads_max, mut processes_max) = (1, 1);
    let mut prev = Counters::default();
    let mut prev_t = Instant::now();
    let mut next_tick = prev_t + Duration::from_secs(1);
    let failure = loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match sys::wait_stop_signal(wait.min(Duration::from_millis(100))) {
            Ok(Some(libc::SIGINT | libc::SIGTERM)) => break None,
            Ok(_) => {}
            Err(e) => break Some(Error::io("sigtimedwait", e)),
        }
        if handle.is_finished() {
            break None;
        }
        threads_max = threads_max.max(threads_now());
        processes_max = processes_max.max(1 + stats.get(Field::Children));
        let now_t = Instant::now();
        if now_t < next_tick {
            continue;
        }
        next_tick += Duration::from_secs(1);
        let now = stats.counters();
        if args.stats {
            out(server_stats::stats_line(
                started.elapsed(),
                &now,
                &prev,
                now_t - prev_t,
            ));
            let _ = io::stdout().flush();
        }
        prev = now;
        prev_t = now_t;
    };
    threads_max = threads_max.max(threads_now());
    stop.trigger();
    (threads_max, processes_max, failure)
}

/// Waits for the stopped model to finish what it owes, at most `--shutdown-timeout` (and a
/// second for its threads to end): the model's error, if it ended in one.
fn finish(
    handle: std_thread::JoinHandle<io::Result<()>>,
    model: Model,
    args: &ModelArgs,
) -> Option<Error> {
    let deadline = Instant::now() + Duration::from_secs_f64(args.shutdown_timeout + 1.0);
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            say("model-server: the model did not stop within --shutdown-timeout: connections cut");
            return None;
        }
        std_thread::sleep(Duration::from_millis(5));
    }
    match handle.join() {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Error::io(format!("model {model}"), e)),
        Err(_) => Some(Error::Shard {
            shard: 0,
            reason: "the model's thread panicked".into(),
        }),
    }
}

/// Threads of this process now (/proc/self/status).
fn threads_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(1)
}

/// `epoll-et` and `uring`: the project's servers are those models. This process becomes
/// `epoll-server` or `uring-server` (beside this binary) with the flags that apply; only
/// an error returns.
fn exec_server(model: Model, args: &ModelArgs) -> Error {
    use std::os::unix::process::CommandExt;
    let name = match model {
        Model::EpollEt => "epoll-server",
        _ => "uring-server",
    };
    let path = match std::env::current_exe() {
        Ok(me) => me.with_file_name(name),
        Err(e) => return Error::io("finding model-server's own path", e),
    };
    let mut cmd = std::process::Command::new(&path);
    cmd.arg("--host")
        .arg(args.host.to_string())
        .arg("--ports")
        .arg(args.ports.to_string())
        .arg("--shutdown-timeout")
        .arg(args.shutdown_timeout.to_string());
    if let Some(n) = args.cores {
        cmd.arg("--cores").arg(n.to_string());
    }
    if let Some(n) = args.max_conns {
        cmd.arg("--max-conns").arg(n.to_string());
    }
    if args.stats {
        cmd.arg("--stats");
    }
    if let Some(p) = &args.stats_json {
        cmd.arg("--stats-json").arg(p);
    }
    let e = cmd.exec();
    Error::Limit {
        what: format!("--model {model} runs {}: {e}", path.display()),
        fix: format!("install {name} beside model-server (cargo build builds both)"),
    }
}
