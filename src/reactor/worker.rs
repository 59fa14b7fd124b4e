//! The master of the Reactor's worker processes (nginx style): an epoll process holds at
//! most RLIMIT_NOFILE connections, so above that the shards are processes. The master
//! re-executes this binary once per worker with hidden `--worker-*` flags; each worker binds
//! its own SO_REUSEPORT listeners, is pinned to its core, prints `ready`, then a JSON
//! counters line each second and its summary as one JSON line at exit. The master sums them,
//! forwards SIGINT/SIGTERM by PID, reports a worker that dies, and exits once all have.

use clap::ValueEnum;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::ServerArgs;
use crate::error::{Error, Result};
use crate::plan::{EngineKind, Plan};
use crate::server;
use crate::stats::{self, Counters, Summary};
use crate::sys::{self, notify::Notify};

enum Msg {
    Line(usize, String),
    Eof(usize),
}

/// How long a worker may take to bind and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Worker {
    child: Child,
    latest: Counters,
    summary: Option<Counters>,
    exited: bool,
}

fn spawn(
    args: &ServerArgs,
    index: usize,
    cpu: usize,
    cap: u64,
    gate: Option<&sys::SharedCounter>,
    tx: mpsc::Sender<Msg>,
) -> Result<Child> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    let mut cmd = Command::new(exe);
    if let Some(user) = &args.user {
        cmd.args(["--user", user]);
    }
    // The master speaks to systemd for its workers (NotifyAccess=main would drop theirs).
    cmd.env_remove("NOTIFY_SOCKET");
    if let (Some(max), Some(gate)) = (args.max_conns, gate) {
        // Every worker counts its connections in the one shared counter, against the cap.
        cmd.args(["--max-conns", &max.to_string()])
            .args(["--worker-gate-fd", &gate.fd().to_string()]);
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
        .args([
            "--batch-usec",
            &args.batch_usec(EngineKind::Epoll).to_string(),
        ])
        .args([
            "--worker-index",
            &index.to_string(),
            "--worker-cpu",
            &cpu.to_string(),
        ])
        .args(["--worker-cap", &cap.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io("starting a worker process", e))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(Msg::Line(index, line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Msg::Eof(index));
    });
    Ok(child)
}

fn stop_all(workers: &mut [Worker], sig: i32) {
    for w in workers.iter_mut().filter(|w| !w.exited) {
        // The worker may have exited since we last looked; that is fine.
        let _ = sys::kill(w.child.id(), sig);
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
    let (tx, rx) = mpsc::channel();
    // `--max-conns` holds across the workers: they share one count of open connections.
    let gate = match args.max_conns {
        Some(_) => Some(
            sys::SharedCounter::create()
                .map_err(|e| Error::io("creating the shared connection count", e))?,
        ),
        None => None,
    };
    // What `--metrics` serves: each worker's latest counters, copied in by `supervise`.
    let latest = Arc::new(Mutex::new(vec![Counters::default(); plan.workers]));
    if let Some(addr) = args.metrics {
        let latest = latest.clone();
        let source = Arc::new(move || latest.lock().map(|l| l.clone()).unwrap_or_default());
        server::metrics::serve(addr, "epoll", source)?;
    }
    let mut workers = Vec::with_capacity(plan.workers);
    for (index, cpu) in plan.shard_cpus.iter().enumerate() {
        match spawn(args, index, *cpu, plan.shard_cap, gate.as_ref(), tx.clone()) {
            Ok(child) => workers.push(Worker {
                child,
                latest: Counters::default(),
                summary: None,
                exited: false,
            }),
            Err(e) => {
                stop_all(&mut workers, libc::SIGKILL);
                return Err(e);
            }
        }
    }
    drop(tx);

    let mut ready = vec![false; workers.len()];
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut failure = None;
    while failure.is_none() && !ready.iter().all(|r| *r) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Msg::Line(i, line)) if line == "ready" => ready[i] = true,
            Ok(Msg::Line(..)) => {}
            Ok(Msg::Eof(i)) => {
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
        println!("{}", server::ready_line(args, plan));
        let _ = std::io::stdout().flush();
        let notify = Notify::from_env("epoll-server");
        if let Some(n) = &notify {
            n.send(&server::ready_message(args, plan));
        }
        failure = supervise(
            args,
            &mut workers,
            &rx,
            &mut died,
            started,
            notify.as_ref(),
            &latest,
        );
        if let Some(n) = &notify {
            n.send("STOPPING=1");
        }
    }

    // Stop every worker and wait for all, cutting off any that outlive the shutdown timeout.
    stop_all(&mut workers, libc::SIGTERM);
    let limit =
        Instant::now() + Duration::from_secs_f64(args.shutdown_timeout) + Duration::from_secs(5);
    let mut eofs = 0;
    while eofs < workers.len() {
        match rx.recv_timeout(limit.saturating_duration_since(Instant::now())) {
            Ok(Msg::Line(i, line)) => take_line(&mut workers[i], &line),
            Ok(Msg::Eof(_)) => eofs += 1,
            Err(_) => {
                stop_all(&mut workers, libc::SIGKILL);
                failure.get_or_insert(Error::Shard {
                    shard: 0,
                    reason: "a worker did not stop in time and was killed".into(),
                });
                break;
            }
        }
    }
    for (i, w) in workers.iter_mut().enumerate() {
        match w.child.wait() {
            Ok(st) if !st.success() && !died.contains(&i) => {
                died.push(i);
                eprintln!(
                    "epoll-server: worker {i} (pid {}) exited with {st}",
                    w.child.id()
                );
            }
            _ => {}
        }
    }
    let per_shard: Vec<Counters> = workers
        .iter()
        .map(|w| w.summary.unwrap_or(w.latest))
        .collect();
    died.sort_unstable();
    let summary = Summary::new(
        "epoll",
        started,
        per_shard,
        sys::cpu_times(true),
        died.clone(),
    );
    println!("{}", summary.human());
    server::write_stats_json(args, &summary)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(&shard) = died.first() {
        return Err(Error::Shard {
            shard,
            reason: format!("worker processes died while serving: {died:?}"),
        });
    }
    Ok(summary)
}

/// Sums and prints stats each second, reports workers that die, until a stop signal.
fn supervise(
    args: &ServerArgs,
    workers: &mut [Worker],
    rx: &mpsc::Receiver<Msg>,
    died: &mut Vec<usize>,
    started: Instant,
    notify: Option<&Notify>,
    latest: &Mutex<Vec<Counters>>,
) -> Option<Error> {
    let mut prev = Counters::default();
    let mut prev_t = Instant::now();
    let mut next_tick = prev_t + Duration::from_secs(1);
    loop {
        let wait = next_tick
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match sys::wait_stop_signal(wait) {
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(e) => return Some(Error::io("sigtimedwait", e)),
        }
        for msg in rx.try_iter() {
            if let Msg::Line(i, line) = msg {
                take_line(&mut workers[i], &line);
            }
        }
        if let Ok(mut l) = latest.lock() {
            for (to, w) in l.iter_mut().zip(workers.iter()) {
                *to = w.latest;
            }
        }
        for (i, w) in workers.iter_mut().enumerate() {
            if w.exited {
                continue;
            }
            if let Ok(Some(st)) = w.child.try_wait() {
                w.exited = true;
                died.push(i);
                eprintln!(
                    "epoll-server: worker {i} (pid {}) died: {st}; its connections are lost, the \
                     other workers go on",
                    w.child.id()
                );
            }
        }
        let now_t = Instant::now();
        if now_t >= next_tick {
            next_tick += Duration::from_secs(1);
            if args.stats || notify.is_some() {
                let now = Counters::sum(workers.iter().map(|w| &w.latest));
                let line = stats::stats_line(started.elapsed(), &now, &prev, now_t - prev_t);
                if let Some(n) = notify {
                    n.send(&format!("STATUS={line}"));
                }
                if args.stats {
                    println!("{line}");
                    let _ = std::io::stdout().flush();
                }
                prev = now;
                prev_t = now_t;
            }
        }
    }
}
