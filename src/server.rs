//! What both servers share around their shards: preflight and planning, binding the
//! listeners, one pinned thread per shard, SIGINT/SIGTERM, the ready line, the stats line,
//! the summary and `--stats-json`. An engine only builds and runs a shard.

pub mod access;
pub mod aof;
pub mod core;
pub mod metrics;

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::ServerArgs;
use crate::error::{Error, Result};
use crate::plan::{self, EngineKind, Plan};
use crate::proto::{http, redis};
use crate::stats::{self, Counters, SharedCounters, Summary};
use crate::sys::{self, limits::HostLimits, notify::Notify, user};
use crate::timer::Timeouts;

/// What a shard is handed.
pub struct ShardCtx {
    pub index: usize,
    /// One non-blocking SO_REUSEPORT listener per port.
    pub listeners: Vec<OwnedFd>,
    /// Becomes readable when the shard must stop.
    pub wake: OwnedFd,
    pub counters: Arc<SharedCounters>,
    pub shutdown_timeout: Duration,
    /// HTTP's limits if HTTP is served.
    pub http: Option<http::Limits>,
    /// The keyspace and its append-only file if Redis is served (echo if neither is).
    pub redis: Option<RedisCtx>,
    pub timeouts: Timeouts,
    /// `--batch-usec`: how long a shard gathers events once one is there (0: not at all).
    pub batch_usec: u32,
    /// The `--max-conns` cap the shards of this process share, when one is set.
    pub gate: Option<Arc<Gate>>,
    /// What SIGHUP changes while the shard runs.
    pub live: Arc<core::Live>,
    /// `--access-log`, with `--access-log-buffer` and `--access-log-fsync`.
    pub log: Option<(Arc<access::LogFile>, usize, Option<Duration>)>,
}

/// What a shard serving Redis shares with the others: the server's one keyspace, and its
/// append-only file.
#[derive(Clone)]
pub struct RedisCtx {
    pub keyspace: Arc<redis::Keyspace>,
    pub limits: redis::Limits,
    pub aof: Option<Arc<aof::Aof>>,
}

impl RedisCtx {
    /// The keyspace of a server about to run `shards` shards, with its append-only file
    /// replayed, if Redis is served; an error for Redis's flags without it.
    pub fn open(args: &ServerArgs, shards: usize) -> Result<Option<RedisCtx>> {
        let Some(limits) = args.redis() else {
            if args.appendonly.is_some() || args.maxmemory.is_some() {
                return Err(Error::BadFlag(
                    "--appendonly and --maxmemory are for --proto redis".into(),
                ));
            }
            return Ok(None);
        };
        let keyspace = Arc::new(redis::Keyspace::new(redis::Config {
            maxmemory: args.maxmemory,
            journal: args.appendonly.is_some(),
        }));
        let aof = args
            .appendonly
            .as_deref()
            .map(|p| aof::Aof::open(p, args.appendfsync, &keyspace, shards).map(Arc::new))
            .transpose()?;
        Ok(Some(RedisCtx {
            keyspace,
            limits,
            aof,
        }))
    }

    /// At exit, once every shard has stopped: what the journal still holds goes to the
    /// file, fsynced unless `--appendfsync no` (Redis does the same at shutdown).
    fn close(&self) {
        if let (Some(aof), Some(journal)) = (&self.aof, self.keyspace.journal()) {
            let sync = aof.policy() != crate::cli::Fsync::No;
            let mut counters = Counters::default();
            aof.write_out(journal, sync, &mut counters);
        }
    }
}

/// The `--max-conns` cap: a connection accepted beyond it is closed at once. One atomic add
/// per accept and per close, on a counter the shards of one process share, or, for the
/// Reactor's worker processes, in memory shared by all of them.
pub struct Gate {
    open: Counter,
    /// The cap; SIGHUP may change it.
    max: AtomicU64,
    /// The slot of the shared count that holds this worker's own share of it, which its
    /// master gives back if it dies.
    mine: Option<usize>,
}

enum Counter {
    Local(AtomicU64),
    Shared(sys::SharedCounter),
}

impl Gate {
    pub fn new(max: u64) -> Gate {
        Gate {
            open: Counter::Local(AtomicU64::new(0)),
            max: AtomicU64::new(max),
            mine: None,
        }
    }

    /// A cap counted in slot 0 of `shared`, with the other processes that map it; this
    /// process's share is also counted in slot `mine`, for its master.
    pub fn shared(shared: sys::SharedCounter, mine: Option<usize>, max: u64) -> Gate {
        Gate {
            open: Counter::Shared(shared),
            max: AtomicU64::new(max),
            mine,
        }
    }

    fn share(&self) -> Option<&AtomicU64> {
        match (&self.open, self.mine) {
            (Counter::Shared(c), Some(i)) => Some(c.slot(i)),
            _ => None,
        }
    }

    fn count(&self) -> &AtomicU64 {
        match &self.open {
            Counter::Local(c) => c,
            Counter::Shared(c) => c.get(),
        }
    }

    /// Takes a place for a new connection; false (and nothing taken) at the cap.
    pub fn enter(&self) -> bool {
        if self.count().fetch_add(1, Ordering::Relaxed) < self.max.load(Ordering::Relaxed) {
            if let Some(m) = self.share() {
                m.fetch_add(1, Ordering::Relaxed);
            }
            true
        } else {
            self.count().fetch_sub(1, Ordering::Relaxed);
            false
        }
    }

    /// A new cap: connections above it stay open, new ones wait for room below it.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// A connection that `enter` let in has closed.
    pub fn leave(&self) {
        if let Some(m) = self.share() {
            m.fetch_sub(1, Ordering::Relaxed);
        }
        self.count().fetch_sub(1, Ordering::Relaxed);
    }
}

/// An engine: builds a thread's shards on the calling (pinned) thread, calls `ready` once
/// they can take connections, then runs them until their wake fds fire and every connection
/// has closed. A thread has one shard unless the plan puts several rings on it (Uring).
pub trait Engine: Sync {
    const NAME: &'static str;
    const KIND: EngineKind;
    /// `--batch-usec` as this engine resolved it (its shards get it in `ShardCtx`).
    fn batch_usec(&self) -> u32;
    /// The counters of each shard of `ctxs`, in order.
    fn run_thread(&self, ctxs: Vec<ShardCtx>, ready: &mut dyn FnMut())
    -> io::Result<Vec<Counters>>;
}

/// Where a server's lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A person (or a test) reads: plan, ready line, stats lines, summary.
    Human,
    /// A master process reads: `ready`, then a JSON counters line each second, then the
    /// summary as one JSON line.
    Worker,
}

/// Writes `line` to stdout, where a reader that went away (EPIPE) must not end the server:
/// `println!` would panic.
pub fn out(line: impl std::fmt::Display) {
    let _ = writeln!(io::stdout(), "{line}");
}

/// Writes `line` to stderr, ignoring a closed stderr as `out` does stdout.
pub fn say(line: impl std::fmt::Display) {
    let _ = writeln!(io::stderr(), "{line}");
}

/// The user-facing error for a failed bind or listen on `addr`.
pub fn bind_error(addr: SocketAddr, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => Error::PortInUse(addr),
        Some(libc::EADDRNOTAVAIL) => Error::BadFlag(format!(
            "--host {}: no interface of this machine has that address",
            addr.ip()
        )),
        _ => Error::io(format!("listening on {addr}"), e),
    }
}

/// Reads the host limits and plans the shards (or workers) for `kind`, `rings_per_thread` of
/// them on a thread (Uring; 0: all of a core's).
pub fn make_plan(args: &ServerArgs, kind: EngineKind, rings_per_thread: usize) -> Result<Plan> {
    let limits = HostLimits::read().map_err(|e| Error::io("reading host limits", e))?;
    let cpus = sys::allowed_cpus().map_err(|e| Error::io("sched_getaffinity", e))?;
    let request = plan::Request {
        engine: kind,
        max_conns: args.max_conns,
        cores: args.cores,
        ports: args.ports.len(),
        rings_per_thread,
    };
    plan::plan(&request, &cpus, &limits)
}

/// Fails with a clear error if any port is taken (see `sys::port_in_use`).
pub fn check_ports(args: &ServerArgs) -> Result<()> {
    for port in args.ports.ports() {
        let addr = SocketAddr::new(args.host, *port);
        if sys::port_in_use(addr).map_err(|e| bind_error(addr, e))? {
            return Err(Error::PortInUse(addr));
        }
    }
    Ok(())
}

/// One listener per port for each of `shards` shards, each with `backlog`.
pub fn bind_listeners(
    args: &ServerArgs,
    shards: usize,
    nonblocking: bool,
    backlog: u32,
) -> Result<Vec<Vec<OwnedFd>>> {
    (0..shards)
        .map(|_| {
            args.ports
                .ports()
                .iter()
                .map(|port| {
                    let addr = SocketAddr::new(args.host, *port);
                    sys::reuseport_listener(addr, nonblocking, backlog)
                        .map_err(|e| bind_error(addr, e))
                })
                .collect()
        })
        .collect()
}

pub fn print_plan(name: &str, plan: &Plan) {
    eprintln!("{name}: {}", plan.describe());
    for w in &plan.warnings {
        eprintln!("{name}: warning: {w}");
    }
}

/// The line every server prints once all its listeners are ready.
pub fn ready_line(args: &ServerArgs, plan: &Plan) -> String {
    let host = match args.host {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!(
        "listening on {host}:{} ({} ports), {} shards on cores {}",
        args.ports,
        args.ports.len(),
        plan.shards(),
        plan.cpus_label()
    )
}

/// What SIGHUP may change in a running server: the timeouts and the `--max-conns` cap. The
/// Reactor's master sends it to its workers as one JSON line on their stdin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LiveSettings {
    pub idle_timeout: f64,
    pub header_timeout: f64,
    pub body_timeout: f64,
    pub send_timeout: f64,
    pub shutdown_timeout: f64,
    pub max_conns: Option<u64>,
}

impl LiveSettings {
    pub fn of(args: &ServerArgs) -> LiveSettings {
        LiveSettings {
            idle_timeout: args.idle_timeout,
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            send_timeout: args.send_timeout,
            shutdown_timeout: args.shutdown_timeout,
            max_conns: args.max_conns,
        }
    }

    /// `running` with these settings.
    pub fn over(&self, running: &ServerArgs) -> ServerArgs {
        ServerArgs {
            idle_timeout: self.idle_timeout,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            send_timeout: self.send_timeout,
            shutdown_timeout: self.shutdown_timeout,
            max_conns: self.max_conns.or(running.max_conns),
            ..running.clone()
        }
    }

    /// Makes the shards of a server started with `running` take these settings (the
    /// running protocol decides which timeouts apply).
    pub fn apply(&self, running: &ServerArgs, live: &core::Live, gate: Option<&Gate>) {
        let args = self.over(running);
        live.set(
            args.timeouts(),
            Duration::from_secs_f64(args.shutdown_timeout),
        );
        if let (Some(g), Some(max)) = (gate, self.max_conns) {
            g.set_max(max);
        }
    }
}

/// SIGHUP: reads the `--config` file again and hands `apply` what can change while the
/// server runs (the idle, header, body, send and shutdown timeouts, and the `--max-conns`
/// cap when the server was started with one, `capped`), saying on stderr what it applied
/// and what needs a restart. A file that does not check changes nothing.
pub fn reload(name: &str, capped: bool, apply: &mut dyn FnMut(LiveSettings)) {
    let say = |what: String| say(format!("{name}: SIGHUP: {what}"));
    let Some(reread) = crate::config::reread() else {
        say("no --config file to read again: nothing changed".into());
        return;
    };
    let checked = reread.and_then(|(new, changes)| {
        validate(&new).map_err(|e| e.to_string())?;
        Ok((new, changes))
    });
    let (new, changes) = match checked {
        Ok(read) => read,
        Err(e) => return say(format!("{e}: nothing changed")),
    };
    if changes.is_empty() {
        return say("the settings are as they were".into());
    }
    let (mut applied, mut restart) = (Vec::new(), Vec::new());
    for c in &changes {
        let now = match c.key.as_str() {
            "idle-timeout" | "header-timeout" | "body-timeout" | "send-timeout"
            | "shutdown-timeout" => true,
            "max-conns" => capped && new.max_conns.is_some(),
            _ => false,
        };
        if now {
            applied.push(format!("{} = {} (was {})", c.key, c.new, c.old));
        } else {
            restart.push(c.key.as_str());
        }
    }
    if !applied.is_empty() {
        let mut settings = LiveSettings::of(&new);
        if !capped {
            settings.max_conns = None;
        }
        apply(settings);
        say(format!("applied {}", applied.join(", ")));
    }
    if !restart.is_empty() {
        say(format!(
            "{} changed too, which needs a restart: kept as started",
            restart.join(", ")
        ));
    }
}

/// What systemd is told once the server listens (`Type=notify`).
pub fn ready_message(args: &ServerArgs, plan: &Plan) -> String {
    format!(
        "READY=1\nMAINPID={}\nSTATUS={}",
        std::process::id(),
        ready_line(args, plan)
    )
}

/// The longest any timeout flag may be: a year.
const MAX_TIMEOUT_S: f64 = 365.0 * 86_400.0;

pub fn validate(args: &ServerArgs) -> Result<()> {
    for (flag, v) in [
        ("--shutdown-timeout", args.shutdown_timeout),
        ("--idle-timeout", args.idle_timeout),
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--send-timeout", args.send_timeout),
        ("--access-log-fsync", args.access_log_fsync),
    ] {
        if !(v.is_finite() && (0.0..=MAX_TIMEOUT_S).contains(&v)) {
            return Err(Error::BadFlag(format!(
                "{flag} must be a number of seconds from 0 to {MAX_TIMEOUT_S} (a year), not {v}"
            )));
        }
    }
    resolve_user(args)?;
    // The shortest HTTP/1.1 request with its Host header is 27 bytes.
    if args.max_header_bytes < 64 {
        return Err(Error::BadFlag(
            "--max-header-bytes must be at least 64 (a request line and a Host header)".into(),
        ));
    }
    Ok(())
}

/// `--pid-file`: claimed at start (a file naming a live process is an error), written once
/// the listeners are bound, removed when the server exits (if it still names this process).
pub struct PidFile {
    path: PathBuf,
    written: bool,
}

impl PidFile {
    /// None without `--pid-file`.
    pub fn claim(args: &ServerArgs) -> Result<Option<PidFile>> {
        let Some(path) = &args.pid_file else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Ok(pid) = text.trim().parse::<u32>()
                    && pid != std::process::id()
                    && sys::process_exists(pid)
                {
                    return Err(Error::Running(format!(
                        "--pid-file {} names process {pid}, which is running: is this server \
                         already started? Stop it, or give another --pid-file",
                        path.display()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("reading --pid-file {}", path.display()),
                    e,
                ));
            }
        }
        Ok(Some(PidFile {
            path: path.clone(),
            written: false,
        }))
    }

    /// Writes this process's PID (to a temporary file renamed over the path, so that a
    /// reader never sees half of it).
    pub fn write(&mut self) -> Result<()> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| Error::io(format!("writing --pid-file {}", self.path.display()), e))?;
        self.written = true;
        Ok(())
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if self.written
            && ours
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            eprintln!(
                "warning: could not remove --pid-file {}: {e} (with --user, its directory must \
                 be writable by that user)",
                self.path.display()
            );
        }
    }
}

/// `--user NAME[:GROUP]`: whom the server becomes once its listeners and PID file are set
/// up; None without it, or when the process already runs as that user. Errors name what is
/// wrong: no such user or group, root itself, or no root to drop from.
pub fn resolve_user(args: &ServerArgs) -> Result<Option<user::Ids>> {
    let Some(spec) = &args.user else {
        return Ok(None);
    };
    let (name, group) = match spec.split_once(':') {
        Some((n, g)) => (n, Some(g)),
        None => (spec.as_str(), None),
    };
    let lookup = |e| Error::io(format!("looking up --user {spec}"), e);
    let mut ids = user::user(name)
        .map_err(lookup)?
        .ok_or_else(|| Error::BadFlag(format!("--user {spec}: there is no user {name:?}")))?;
    if let Some(g) = group {
        ids.gid = user::group(g)
            .map_err(lookup)?
            .ok_or_else(|| Error::BadFlag(format!("--user {spec}: there is no group {g:?}")))?;
    }
    if ids.uid == 0 {
        return Err(Error::BadFlag(format!(
            "--user {spec} would keep the server running as root: name an unprivileged user"
        )));
    }
    match user::euid() {
        0 => Ok(Some(ids)),
        me if me == ids.uid => Ok(None),
        me => Err(Error::Limit {
            what: format!("--user {spec}: changing users needs root, and this runs as uid {me}"),
            fix: "start it as root, or without --user".into(),
        }),
    }
}

/// Becomes the `--user`, if one is asked, for good (every thread): the PID file is given to
/// it first, so that it can remove the file at exit.
pub fn drop_privileges(args: &ServerArgs, pid_file: Option<&PidFile>) -> Result<()> {
    let Some(ids) = resolve_user(args)? else {
        return Ok(());
    };
    if let Some(p) = pid_file {
        user::chown(&p.path, ids).map_err(|e| {
            Error::io(
                format!("giving --pid-file {} to --user", p.path.display()),
                e,
            )
        })?;
    }
    let spec = args.user.as_deref().unwrap_or_default();
    user::become_ids(ids).map_err(|e| Error::io(format!("becoming --user {spec}"), e))
}

/// Writes the summary JSON to `--stats-json`, if asked.
pub fn write_stats_json(args: &ServerArgs, summary: &Summary) -> Result<()> {
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(summary).expect("a summary always serializes");
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// The `--max-conns` gate of a server whose shards are all threads of this process.
pub fn local_gate(args: &ServerArgs) -> Option<Arc<Gate>> {
    args.max_conns.map(|max| Arc::new(Gate::new(max)))
}

/// Runs `threads` (each a CPU and the shards it drives) of `engine` as threads of this
/// process until SIGINT or SIGTERM (blocked beforehand by the caller), with `listeners[i]`
/// for shard i, under `gate`; writes `pid_file` once they listen.
#[allow(clippy::too_many_arguments)]
pub fn serve<E: Engine>(
    engine: &E,
    args: &ServerArgs,
    plan: &Plan,
    threads: &[(usize, Vec<usize>)],
    listeners: Vec<Vec<OwnedFd>>,
    output: Output,
    gate: Option<Arc<Gate>>,
    mut pid_file: Option<PidFile>,
) -> Result<Summary> {
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(args.shutdown_timeout);
    let shards = listeners.len();
    let live = Arc::new(core::Live::default());
    let log = open_access_log(args)?;
    let redis = RedisCtx::open(args, shards)?;
    let notify = match output {
        Output::Human => Notify::from_env(&format!("{}-server", E::NAME)),
        // A worker's master speaks for it.
        Output::Worker => None,
    };
    let mut wakes = Vec::with_capacity(shards);
    let mut shared = Vec::with_capacity(shards);
    let mut ctxs = Vec::with_capacity(shards);
    for (index, mine) in listeners.into_iter().enumerate() {
        let wake = sys::eventfd().map_err(|e| Error::io("eventfd", e))?;
        // Our own handle on the eventfd: the shard closes its copy when it ends, and a write
        // to a closed fd's number could land in whatever the shard's process opened next.
        wakes.push(
            wake.try_clone()
                .map_err(|e| Error::io("duplicating an eventfd", e))?,
        );
        let counters = Arc::new(SharedCounters::default());
        shared.push(counters.clone());
        ctxs.push(Some(ShardCtx {
            index,
            listeners: mine,
            wake,
            counters,
            shutdown_timeout: timeout,
            http: args.http(),
            redis: redis.clone(),
            timeouts: args.timeouts(),
            batch_usec: engine.batch_usec(),
            gate: gate.clone(),
            live: live.clone(),
            log: log.clone().map(|l| {
                let fsync = args.access_log_fsync;
                let fsync = (fsync > 0.0).then(|| Duration::from_secs_f64(fsync));
                (l, args.access_log_buffer, fsync)
            }),
        }));
    }
    if let (Some(addr), Output::Human) = (args.metrics, output) {
        let shared = shared.clone();
        let source = Arc::new(move || shared.iter().map(|c| c.snapshot()).collect());
        metrics::serve(addr, E::NAME, source)?;
    }
    // The listeners are up: the PID file, then `--user` (the shards start as that user).
    if let Some(p) = &mut pid_file {
        p.write()?;
    }
    drop_privileges(args, pid_file.as_ref())?;
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, io::Result<()>)>();
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let (per_shard, failure) = thread::scope(|scope| {
        // The Reactor's `everysec` fsyncs on a thread of its own, as Redis's do (the
        // Proactor's shards fsync through their rings); its counts go with the first shard's.
        let mut syncer = None;
        if let Some(aof) = redis.as_ref().and_then(|r| r.aof.as_deref())
            && E::KIND == EngineKind::Epoll
            && aof.policy() == crate::cli::Fsync::Everysec
        {
            let stopped = &stopped;
            let h = thread::Builder::new()
                .name("aof-sync".into())
                .spawn_scoped(scope, move || aof.sync_every_second(stopped))
                .map_err(|e| Error::io("spawning the append-only file's sync thread", e))?;
            syncer = Some(h);
        }
        let mut handles = Vec::with_capacity(threads.len());
        for (cpu, mine) in threads {
            let cpu = *cpu;
            let first = mine[0];
            let tx = ready_tx.clone();
            let mine: Vec<ShardCtx> = mine.iter().filter_map(|&i| ctxs[i].take()).collect();
            let h = thread::Builder::new()
                .name(format!("shard-{first}"))
                .spawn_scoped(scope, move || -> io::Result<Vec<Counters>> {
                    let mut said = false;
                    let r = sys::pin_current_thread(cpu).and_then(|()| {
                        engine.run_thread(mine, &mut || {
                            said = true;
                            let _ = tx.send((first, Ok(())));
                        })
                    });
                    if let Err(e) = &r
                        && !said
                    {
                        let _ = tx.send((first, Err(io::Error::new(e.kind(), e.to_string()))));
                    }
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    wake_all(&wakes);
                    let failure = Some(Error::io("spawning a shard thread", e));
                    let per_shard = join_all(handles, threads, &shared).0;
                    // The sync thread ends with the scope only once told to.
                    stopped.store(true, Ordering::Release);
                    return Ok((per_shard, failure));
                }
            }
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((shard, Err(e))) => {
                    failure.get_or_insert(Error::Shard {
                        shard,
                        reason: format!("setting up: {e}"),
                    });
                    break;
                }
                Err(_) => break,
            }
        }
        if failure.is_none() {
            match output {
                Output::Human => out(ready_line(args, plan)),
                Output::Worker => out("ready"),
            }
            let _ = io::stdout().flush();
            if let Some(n) = &notify {
                n.send(&ready_message(args, plan));
            }
            let name = format!("{}-server", E::NAME);
            let reload = || {
                reload(&name, gate.is_some(), &mut |new| {
                    new.apply(args, &live, gate.as_deref())
                })
            };
            if output == Output::Worker {
                take_settings_from_stdin(args, &live, gate.clone());
            }
            failure = supervise(
                args,
                &handles,
                threads,
                &shared,
                started,
                output,
                notify.as_ref(),
                &reload,
                log.as_deref(),
            );
            if let Some(n) = &notify {
                n.send("STOPPING=1");
            }
        }
        wake_all(&wakes);
        let (mut per_shard, join_failure) = join_all(handles, threads, &shared);
        stopped.store(true, Ordering::Release);
        if let (Some(h), Some(first)) = (syncer, per_shard.first_mut()) {
            *first += h.join().unwrap_or_default();
        }
        Ok((per_shard, failure.or(join_failure)))
    })?;
    if let Some(r) = &redis {
        r.close();
    }
    let summary = Summary::new(
        E::NAME,
        started,
        per_shard,
        sys::cpu_times(false),
        Vec::new(),
    );
    match output {
        Output::Human => out(summary.human()),
        Output::Worker => {
            out(serde_json::to_string(&summary).expect("a summary always serializes"))
        }
    }
    write_stats_json(args, &summary)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// A worker process: each line its master writes on its stdin is the `LiveSettings` of a
/// SIGHUP, applied as the master's own would be. The pipe ends when the master is gone
/// (killed, say): the worker then stops as on SIGTERM rather than serve on unsupervised.
fn take_settings_from_stdin(args: &ServerArgs, live: &Arc<core::Live>, gate: Option<Arc<Gate>>) {
    let (args, live) = (args.clone(), live.clone());
    let spawned = thread::Builder::new()
        .name("settings".into())
        .spawn(move || {
            for line in io::stdin().lock().lines().map_while(io::Result::ok) {
                match serde_json::from_str::<LiveSettings>(&line) {
                    Ok(new) => new.apply(&args, &live, gate.as_deref()),
                    Err(e) => say(format!(
                        "epoll-server worker: ignoring settings {line:?}: {e}"
                    )),
                }
            }
            let _ = sys::kill(std::process::id(), libc::SIGTERM);
        });
    if let Err(e) = spawned {
        say(format!(
            "epoll-server worker: no SIGHUP settings will be taken: {e}"
        ));
    }
}

/// SIGUSR1: the access log is opened again (after a rotation); a failure is said, and the
/// old file stays in use.
pub fn reopen_log(log: Option<&access::LogFile>) {
    let Some(log) = log else {
        return say("SIGUSR1: no --access-log to reopen".to_string());
    };
    if let Err(e) = log.reopen() {
        say(format!(
            "SIGUSR1: reopening the access log {}: {e}; the old file stays in use",
            log.path().display()
        ));
    }
}

/// Opens `--access-log` (before privileges are dropped, as nginx does).
pub fn open_access_log(args: &ServerArgs) -> Result<Option<Arc<access::LogFile>>> {
    args.access_log()
        .map(|p| {
            access::LogFile::open(p)
                .map(Arc::new)
                .map_err(|e| Error::io(format!("--access-log {}", p.display()), e))
        })
        .transpose()
}

fn wake_all(wakes: &[OwnedFd]) {
    for fd in wakes {
        // A shard that has already stopped no longer reads its eventfd; that is fine.
        let _ = sys::eventfd_wake(fd.as_raw_fd());
    }
}

type Handle<'s> = thread::ScopedJoinHandle<'s, io::Result<Vec<Counters>>>;

/// Joins the threads spawned so far (the first `handles.len()` of `threads`): each shard's
/// counters in shard order, the last ones published for a thread that failed.
fn join_all(
    handles: Vec<Handle<'_>>,
    threads: &[(usize, Vec<usize>)],
    shared: &[Arc<SharedCounters>],
) -> (Vec<Counters>, Option<Error>) {
    let mut failure = None;
    let mut per_shard: Vec<Counters> = shared.iter().map(|c| c.snapshot()).collect();
    for (h, (_, mine)) in handles.into_iter().zip(threads) {
        let reason = match h.join() {
            Ok(Ok(counters)) => {
                for (&i, c) in mine.iter().zip(counters) {
                    per_shard[i] = c;
                }
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "panicked".into(),
        };
        for &i in mine {
            per_shard[i] = shared[i].snapshot();
        }
        failure.get_or_insert(Error::Shard {
            shard: mine[0],
            reason,
        });
    }
    (per_shard, failure)
}

/// Prints stats each second until a stop signal or a shard that ended on its own.
/// With `notify` (systemd), the stats line is also the unit's status each second. SIGHUP
/// calls `reload` (a worker process ignores it: its master speaks for it).
#[allow(clippy::too_many_arguments)]
fn supervise(
    args: &ServerArgs,
    handles: &[Handle<'_>],
    threads: &[(usize, Vec<usize>)],
    shared: &[Arc<SharedCounters>],
    started: Instant,
    output: Output,
    notify: Option<&Notify>,
    reload: &dyn Fn(),
    log: Option<&access::LogFile>,
) -> Option<Error> {
    let mut prev = Counters::default();
    let mut prev_t = Instant::now();
    let mut next_tick = prev_t + Duration::from_secs(1);
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match sys::wait_stop_signal(wait) {
            Ok(Some(libc::SIGHUP)) if output == Output::Human => reload(),
            Ok(Some(libc::SIGHUP)) => {}
            Ok(Some(libc::SIGUSR1)) => reopen_log(log),
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(e) => return Some(Error::io("sigtimedwait", e)),
        }
        if let Some(t) = handles.iter().position(|h| h.is_finished()) {
            return Some(Error::Shard {
                shard: threads[t].1[0],
                reason: "stopped on its own".into(),
            });
        }
        let now_t = Instant::now();
        if now_t < next_tick {
            continue;
        }
        next_tick += Duration::from_secs(1);
        let snaps: Vec<Counters> = shared.iter().map(|c| c.snapshot()).collect();
        let now = Counters::sum(&snaps);
        let line = || stats::stats_line(started.elapsed(), &now, &prev, now_t - prev_t);
        if let Some(n) = notify {
            n.send(&format!("STATUS={}", line()));
        }
        match output {
            Output::Human if args.stats => out(line()),
            Output::Human => {}
            Output::Worker => out(serde_json::to_string(&now).expect("counters always serialize")),
        }
        let _ = io::stdout().flush();
        prev = now;
        prev_t = now_t;
    }
}
