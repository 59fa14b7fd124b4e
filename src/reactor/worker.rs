//! The master of the Reactor's worker processes (nginx style): an epoll process holds at
//! most RLIMIT_NOFILE connections, so above that the shards are processes. The master
//! re-executes this binary once per worker with hidden `--worker-*` flags; each worker binds
//! its own SO_REUSEPORT listeners, is pinned to its core, prints `ready`, then a JSON
//! counters line each second and its summary as one JSON line at exit. The master sums them,
//! forwards SIGINT/SIGTERM by PID, restarts a worker that dies, and exits once all have. On
//! SIGHUP the master reads the config file again and writes what can change live to each
//! worker's stdin (`server::LiveSettings`, one JSON line), and restarts take it too.
//!
//! Redis: the master first starts the keyspace owner (`super::owner`, the same binary with
//! the hidden `--keyspace-owner`), waits for it to be ready, then the workers, which proxy
//! to it. Its counters are summed as a worker's (the last of `per_shard`). It is not
//! restarted: the keyspace would be lost, so its death ends the server (exit 1). At the
//! stop the workers go first (they finish what their clients are owed, which the owner
//! answers), then the owner, which writes out the journal last.

use clap::ValueEnum;
use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use super::link;
use crate::cli::ServerArgs;
use crate::error::{Error, Result};
use crate::plan::{EngineKind, Plan};
use crate::server::{self, LiveSettings};
use crate::stats::{self, Counters, Summary};
use crate::sys::{self, notify::Notify};

/// A line of worker `slot`'s stdout, or its end; the generation says which of the slot's
/// processes (one more each restart) it came from.
enum Msg {
    Line(usize, u32, String),
    Eof(usize, u32),
}

/// How long a worker may take to bind and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A dead worker is restarted after this, doubled for each death of its slot within
/// `RESPAWN_WINDOW`...
const RESPAWN_BACKOFF: Duration = Duration::from_millis(100);
const RESPAWN_WINDOW: Duration = Duration::from_secs(10);
/// ...and no more once it died this many times within the window: it cannot live (nginx
/// gives up on a worker that dies at once, too).
const RESPAWN_BURST: usize = 5;

struct Worker {
    child: Child,
    /// Which process of this slot the child is: 0, then one more each restart.
    generation: u32,
    latest: Counters,
    summary: Option<Counters>,
    /// What the slot's earlier processes had counted when they died.
    carried: Counters,
    exited: bool,
    /// The current child's stdout has ended.
    eof: bool,
    /// When the slot's processes died lately (for the give-up rule).
    deaths: Vec<Instant>,
    /// When to start the slot's next process, after a death.
    respawn_at: Option<Instant>,
}

impl Worker {
    fn new(child: Child) -> Worker {
        Worker {
            child,
            generation: 0,
            latest: Counters::default(),
            summary: None,
            carried: Counters::default(),
            exited: false,
            eof: false,
            deaths: Vec::new(),
            respawn_at: None,
        }
    }

    /// Everything this slot counted, over its processes.
    fn counters(&self) -> Counters {
        let mut c = self.carried;
        c += self.summary.unwrap_or(self.latest);
        c
    }
}

/// What starting a worker takes, again for each restart.
struct Spawner<'a> {
    args: &'a ServerArgs,
    /// The settings SIGHUP changed last (those of `args` until then).
    settings: Cell<LiveSettings>,
    plan: &'a Plan,
    gate: Option<&'a sys::SharedCounter>,
    tx: mpsc::Sender<Msg>,
    /// Redis: the keyspace owner's socket name.
    owner: Option<String>,
}

/// What a child of the master runs as.
#[derive(Debug, Clone, Copy)]
enum Role<'a> {
    /// A worker; with Redis, proxying to the keyspace owner on this socket.
    Worker { owner: Option<&'a str> },
    /// The keyspace owner, listening on this socket.
    Owner(&'a str),
}

impl Spawner<'_> {
    fn spawn(&self, index: usize, generation: u32) -> Result<Child> {
        spawn(
            &self.settings.get().over(self.args),
            index,
            generation,
            self.plan.shard_cpus[index],
            self.plan.shard_cap,
            self.gate,
            self.tx.clone(),
            Role::Worker {
                owner: self.owner.as_deref(),
            },
        )
    }

    /// The keyspace owner, as child `self.plan.workers` (after the workers' slots).
    fn spawn_owner(&self, name: &str) -> Result<Child> {
        spawn(
            &self.settings.get().over(self.args),
            self.plan.workers,
            0,
            self.plan.shard_cpus[0],
            0,
            None,
            self.tx.clone(),
            Role::Owner(name),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    args: &ServerArgs,
    index: usize,
    generation: u32,
    cpu: usize,
    cap: u64,
    gate: Option<&sys::SharedCounter>,
    tx: mpsc::Sender<Msg>,
    role: Role<'_>,
) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    let mut cmd = Command::new(exe);
    if let Some(user) = &args.user {
        cmd.args(["--user", user]);
    }
    // The master speaks to systemd for its workers (NotifyAccess=main would drop theirs).
    cmd.env_remove("NOTIFY_SOCKET");
    match role {
        Role::Worker { owner } => {
            cmd.args(["--worker-index", &index.to_string()])
                .args(["--worker-cap", &cap.to_string()]);
            if let Some(name) = owner {
                cmd.args(["--worker-owner", name]);
            }
        }
        Role::Owner(name) => {
            cmd.args(["--keyspace-owner", name])
                .args(["--max-bulk-bytes", &args.max_bulk_bytes.to_string()])
                .args([
                    "--appendfsync",
                    args.appendfsync
                        .to_possible_value()
                        .expect("no variant is skipped")
                        .get_name(),
                ]);
            if let Some(path) = &args.appendonly {
                cmd.arg("--appendonly").arg(path);
            }
            if let Some(max) = args.maxmemory {
                cmd.args(["--maxmemory", &max.to_string()]);
            }
        }
    }
    if let (Some(max), Some(gate)) = (args.max_conns, gate) {
        // Every worker counts its connections in the one shared counter, against the cap.
        // ...and its own share in slot 1 + index, which the master gives back if it dies.
        cmd.args(["--max-conns", &max.to_string()])
            .args(["--worker-gate-fd", &gate.fd().to_string()])
            .args(["--worker-share-slot", &(1 + index).to_string()]);
    }
    let mut child = cmd
        .args([
            "--host",
            &args.host.to_string(),
            "--ports",
            &args.ports.to_string(),
        ])
        .args(["--shutdown-timeout", &args.shutdown_timeout.to_string()])
        .args([
            "--proto",
            args.proto
                .to_possible_value()
                .expect("no variant is skipped")
                .get_name(),
        ])
        .args(["--max-header-bytes", &args.max_header_bytes.to_string()])
        .args(["--max-body-bytes", &args.max_body_bytes.to_string()])
        .args(["--idle-timeout", &args.idle_timeout.to_string()])
        .args(["--header-timeout", &args.header_timeout.to_string()])
        .args(["--body-timeout", &args.body_timeout.to_string()])
        .arg("--access-log")
        .arg(&args.access_log)
        .args(["--access-log-buffer", &args.access_log_buffer.to_string()])
        .args(["--access-log-fsync", &args.access_log_fsync.to_string()])
        .args(["--send-timeout", &args.send_timeout.to_string()])
        .args([
            "--batch-usec",
            &args.batch_usec(EngineKind::Epoll).to_string(),
        ])
        .args(["--worker-cpu", &cpu.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| match role {
            Role::Worker { .. } => Error::io("starting a worker process", e),
            Role::Owner(_) => Error::io("starting the keyspace owner", e),
        })?;
    let stdout = child.stdout.take().expect("stdout was piped");
    thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(Msg::Line(index, generation, line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::Eof(index, generation));
    });
    Ok(child)
}

/// Writes `new` to each running worker's stdin; a worker that has just died misses it, and
/// its restart starts with it.
fn tell_workers(workers: &mut [Worker], new: &LiveSettings) {
    let line = serde_json::to_string(new).expect("settings always serialize") + "\n";
    for (i, w) in workers.iter_mut().enumerate().filter(|(_, w)| !w.exited) {
        let sent = w.child.stdin.as_mut().map(|s| s.write_all(line.as_bytes()));
        if let Some(Err(e)) = sent {
            server::say(format!(
                "epoll-server: worker {i} did not take the settings: {e}"
            ));
        }
    }
}

/// Sends `sig` to every worker still running.
fn signal_all(workers: &mut [Worker], sig: i32) {
    for w in workers.iter_mut().filter(|w| !w.exited) {
        // The worker may have exited since we last looked; that is fine.
        let _ = sys::kill(w.child.id(), sig);
    }
}

/// Worker slot `i`'s process has gone (`w.exited`), at `now`: its connections went with it,
/// so its share of the `--max-conns` count is given back; then a restart is planned, unless
/// the slot has died `RESPAWN_BURST` times within `RESPAWN_WINDOW`.
fn died(gate: Option<&sys::SharedCounter>, i: usize, w: &mut Worker, now: Instant) {
    if let Some(g) = gate {
        // The worker counted each connection in slot 0 and then in its own slot (and took it
        // out of its slot first), so a worker killed in between leaves one place wrong.
        let share = g.slot(1 + i).swap(0, std::sync::atomic::Ordering::Relaxed);
        g.get()
            .fetch_sub(share, std::sync::atomic::Ordering::Relaxed);
    }
    w.deaths.retain(|t| now.duration_since(*t) < RESPAWN_WINDOW);
    w.deaths.push(now);
    if w.deaths.len() >= RESPAWN_BURST {
        server::say(format!(
            "epoll-server: worker {i} died {RESPAWN_BURST} times within {RESPAWN_WINDOW:?}: not \
             restarted again"
        ));
    } else {
        w.respawn_at = Some(now + RESPAWN_BACKOFF * (1 << (w.deaths.len() - 1)));
    }
}

/// Takes a worker's line: a counters line, or its final summary.
fn take_line(w: &mut Worker, line: &str) {
    if let Ok(summary) = serde_json::from_str::<serde_json::Value>(line)
        && let Some(totals) = summary.get("totals")
    {
        if let Ok(c) = serde_json::from_value::<Counters>(totals.clone()) {
            w.summary = Some(c);
            w.latest = c;
        }
    } else if let Ok(c) = serde_json::from_str::<Counters>(line) {
        w.latest = c;
    }
}

/// Runs `plan.workers` worker processes of one shard each, every one holding at most
/// `plan.shard_cap` connections, until SIGINT/SIGTERM; returns the summary of them all.
pub fn run_master(
    args: &ServerArgs,
    plan: &Plan,
    mut pid_file: Option<server::PidFile>,
) -> Result<Summary> {
    let started = Instant::now();
    // Each worker opens the access log itself; a file that cannot be opened is said here,
    // once, before any starts.
    server::open_access_log(args)?;
    let (tx, rx) = mpsc::channel();
    // `--max-conns` holds across the workers: they share one count of open connections.
    let gate = match args.max_conns {
        // Slot 0 the count, then each worker's share of it.
        Some(_) => Some(
            sys::SharedCounter::create(1 + plan.workers)
                .map_err(|e| Error::io("creating the shared connection count", e))?,
        ),
        None => None,
    };
    // What `--metrics` serves: each worker's latest counters, copied in by `supervise`.
    let owner = plan
        .keyspace_owner
        .then(|| link::socket_name(std::process::id()));
    let children = plan.workers + usize::from(owner.is_some());
    let latest = Arc::new(Mutex::new(vec![Counters::default(); children]));
    if let Some(addr) = args.metrics {
        let latest = latest.clone();
        let source = Arc::new(move || latest.lock().map(|l| l.clone()).unwrap_or_default());
        server::metrics::serve(addr, "epoll", source)?;
    }
    let spawner = Spawner {
        args,
        settings: Cell::new(LiveSettings::of(args)),
        plan,
        gate: gate.as_ref(),
        tx,
        owner,
    };
    // The owner listens before any worker connects to it.
    let owner = match &spawner.owner {
        Some(name) => Some(start_owner(&spawner, name, &rx)?),
        None => None,
    };
    let mut workers = Vec::with_capacity(children);
    for index in 0..plan.workers {
        match spawner.spawn(index, 0) {
            Ok(child) => workers.push(Worker::new(child)),
            Err(e) => {
                workers.extend(owner);
                signal_all(&mut workers, libc::SIGKILL);
                return Err(e);
            }
        }
    }
    let mut ready = vec![false; workers.len()];
    if let Some(o) = owner {
        workers.push(o);
        ready.push(true);
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut failure = None;
    while failure.is_none() && !ready.iter().all(|r| *r) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Line(i, _, line)) if line == "ready" => ready[i] = true,
            Ok(Msg::Line(..)) => {}
            Ok(Msg::Eof(i, _)) => {
                workers[i].eof = true;
                failure = Some(Error::Shard {
                    shard: i,
                    reason: "worker process exited before it was ready (its error is above)".into(),
                });
            }
            Err(_) => {
                failure = Some(Error::Shard {
                    shard: ready.iter().position(|r| !r).unwrap_or(0),
                    reason: format!("worker not ready within {READY_TIMEOUT:?}"),
                });
            }
        }
    }
    let mut died = Vec::new();
    let mut restarted = Vec::new();
    if failure.is_none()
        && let Some(p) = &mut pid_file
    {
        failure = p.write().err();
    }
    // The workers have dropped `--user` themselves, once their listeners were up.
    if failure.is_none() {
        failure = server::drop_privileges(args, pid_file.as_ref()).err();
    }
    if failure.is_none() {
        server::out(server::ready_line(args, plan));
        let _ = std::io::stdout().flush();
        let notify = Notify::from_env("epoll-server");
        if let Some(n) = &notify {
            n.send(&server::ready_message(args, plan));
        }
        let mut fate = Fate {
            died: &mut died,
            restarted: &mut restarted,
        };
        failure = supervise(
            &spawner,
            &mut workers,
            &rx,
            &mut fate,
            started,
            notify.as_ref(),
            &latest,
        );
        if let Some(n) = &notify {
            n.send("STOPPING=1");
        }
    }

    // Stop every worker and wait for all, cutting off any that outlive the shutdown timeout;
    // then the keyspace owner, which answers the workers until they are gone.
    let timeout = Duration::from_secs_f64(spawner.settings.get().shutdown_timeout);
    for which in [0..plan.workers, plan.workers..workers.len()] {
        if let Some(e) = stop(&mut workers, which, &rx, timeout) {
            failure.get_or_insert(e);
        }
    }
    for (i, w) in workers.iter_mut().enumerate() {
        match w.child.wait() {
            Ok(st) if !st.success() && !died.contains(&i) => {
                died.push(i);
                server::say(format!(
                    "epoll-server: worker {i} (pid {}) exited with {st}",
                    w.child.id()
                ));
            }
            _ => {}
        }
    }
    let per_shard: Vec<Counters> = workers.iter().map(Worker::counters).collect();
    died.sort_unstable();
    let summary = Summary::new(
        "epoll",
        started,
        per_shard,
        sys::cpu_times(true),
        died.clone(),
    );
    let summary = Summary {
        restarted,
        ..summary
    };
    server::out(summary.human());
    server::write_stats_json(args, &summary)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(&shard) = died.first() {
        return Err(Error::Shard {
            shard,
            reason: format!(
                "worker processes died while serving: {died:?} (restarted: {:?})",
                summary.restarted
            ),
        });
    }
    Ok(summary)
}

/// Starts the keyspace owner listening on `name`, and waits until it is ready.
fn start_owner(spawner: &Spawner<'_>, name: &str, rx: &mpsc::Receiver<Msg>) -> Result<Worker> {
    let mut owner = Worker::new(spawner.spawn_owner(name)?);
    let deadline = Instant::now() + READY_TIMEOUT;
    let failure = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Line(_, _, line)) if line == "ready" => return Ok(owner),
            Ok(Msg::Line(..)) => {}
            Ok(Msg::Eof(..)) => break "exited before it was ready (its error is above)",
            Err(_) => break "was not ready in time",
        }
    };
    let _ = sys::kill(owner.child.id(), libc::SIGKILL);
    let _ = owner.child.wait();
    Err(Error::Shard {
        shard: spawner.plan.workers,
        reason: format!("the keyspace owner {failure}"),
    })
}

/// Sends SIGTERM to `workers[which]` and waits for their last lines, killing them if they
/// outlive the shutdown `timeout` (plus 5 s).
fn stop(
    workers: &mut [Worker],
    which: std::ops::Range<usize>,
    rx: &mpsc::Receiver<Msg>,
    timeout: Duration,
) -> Option<Error> {
    signal_all(&mut workers[which.clone()], libc::SIGTERM);
    let limit = Instant::now() + timeout + Duration::from_secs(5);
    while workers[which.clone()].iter().any(|w| !w.eof) {
        match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(Msg::Line(i, g, line)) if g == workers[i].generation => {
                take_line(&mut workers[i], &line)
            }
            Ok(Msg::Eof(i, g)) if g == workers[i].generation => workers[i].eof = true,
            Ok(_) => {}
            Err(_) => {
                signal_all(&mut workers[which.clone()], libc::SIGKILL);
                return Some(Error::Shard {
                    shard: which.start,
                    reason: "a worker did not stop in time and was killed".into(),
                });
            }
        }
    }
    None
}

/// What became of the workers: the slots that died, and the slots restarted (one entry
/// each time).
struct Fate<'a> {
    died: &'a mut Vec<usize>,
    restarted: &'a mut Vec<usize>,
}

/// Sums and prints stats each second, and restarts workers that die, until a stop signal.
fn supervise(
    spawner: &Spawner<'_>,
    workers: &mut [Worker],
    rx: &mpsc::Receiver<Msg>,
    fate: &mut Fate<'_>,
    started: Instant,
    notify: Option<&Notify>,
    latest: &Mutex<Vec<Counters>>,
) -> Option<Error> {
    let args = spawner.args;
    let mut prev = Counters::default();
    let mut prev_t = Instant::now();
    let mut next_tick = prev_t + Duration::from_secs(1);
    loop {
        let wait = next_tick
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        match sys::wait_stop_signal(wait) {
            Ok(Some(libc::SIGHUP)) => {
                server::reload("epoll-server", spawner.gate.is_some(), &mut |new| {
                    spawner.settings.set(new);
                    tell_workers(workers, &new);
                })
            }
            // Each worker reopens its own access log.
            Ok(Some(libc::SIGUSR1)) => signal_all(workers, libc::SIGUSR1),
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(e) => return Some(Error::io("sigtimedwait", e)),
        }
        for msg in rx.try_iter() {
            match msg {
                Msg::Line(i, g, line) if g == workers[i].generation => {
                    take_line(&mut workers[i], &line)
                }
                Msg::Eof(i, g) if g == workers[i].generation => workers[i].eof = true,
                _ => {}
            }
        }
        if let Ok(mut l) = latest.lock() {
            for (to, w) in l.iter_mut().zip(workers.iter()) {
                *to = w.counters();
            }
        }
        let now = Instant::now();
        if spawner.owner.is_some()
            && let Some(o) = workers.get_mut(spawner.plan.workers)
            && let Ok(Some(st)) = o.child.try_wait()
        {
            o.exited = true;
            server::say(format!(
                "epoll-server: the keyspace owner (pid {}) died: {st}; the keyspace is lost \
                 with it (it is not restarted), so the server ends",
                o.child.id()
            ));
            fate.died.push(spawner.plan.workers);
            return Some(Error::Shard {
                shard: spawner.plan.workers,
                reason: "the keyspace owner died".into(),
            });
        }
        for (i, w) in workers.iter_mut().enumerate().take(spawner.plan.workers) {
            if !w.exited
                && let Ok(Some(st)) = w.child.try_wait()
            {
                w.exited = true;
                fate.died.push(i);
                server::say(format!(
                    "epoll-server: worker {i} (pid {}) died: {st}; its connections are lost, the \
                     other workers go on",
                    w.child.id()
                ));
                died(spawner.gate, i, w, now);
            }
            if w.respawn_at.is_some_and(|t| t <= now) {
                w.respawn_at = None;
                match spawner.spawn(i, w.generation + 1) {
                    Ok(child) => {
                        w.carried = w.counters();
                        w.latest = Counters::default();
                        w.summary = None;
                        w.child = child;
                        w.generation += 1;
                        w.exited = false;
                        w.eof = false;
                        fate.restarted.push(i);
                        server::say(format!(
                            "epoll-server: worker {i} restarted (pid {})",
                            w.child.id()
                        ));
                    }
                    Err(e) => {
                        server::say(format!("epoll-server: restarting worker {i}: {e}"));
                        died(spawner.gate, i, w, now);
                    }
                }
            }
        }
        let now_t = Instant::now();
        if now_t >= next_tick {
            next_tick += Duration::from_secs(1);
            if args.stats || notify.is_some() {
                let now = Counters::sum(&workers.iter().map(Worker::counters).collect::<Vec<_>>());
                let line = stats::stats_line(started.elapsed(), &now, &prev, now_t - prev_t);
                if let Some(n) = notify {
                    n.send(&format!("STATUS={line}"));
                }
                if args.stats {
                    server::out(&line);
                    let _ = std::io::stdout().flush();
                }
                prev = now;
                prev_t = now_t;
            }
        }
    }
}
