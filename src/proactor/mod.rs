//! The Proactor: an io_uring echo server. The main thread plans the shards, binds the
//! listeners, starts one thread per shard (each pinned, each owning its ring) and then only
//! prints stats and waits for SIGINT/SIGTERM, which it passes to the shards by eventfd.

pub mod bufring;
pub mod conn;
pub mod ring;
pub mod shard;

use std::io::Write;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::cli::ServerArgs;
use crate::error::{Error, Result};
use crate::plan::{self, Plan};
use crate::stats::{self, Counters, SharedCounters, Summary};
use crate::sys::{self, limits::HostLimits};
use ring::RingConfig;
use shard::{Shard, ShardConfig};

/// The io_uring engine's own knobs, beside the flags both servers share.
#[derive(Debug, Clone)]
pub struct UringConfig {
    pub server: ServerArgs,
    /// Provided buffers per shard (a power of two, at most 32768) and their size.
    pub bufs: u16,
    pub buf_size: u32,
}

/// SQ entries: a loop turn pushes at most a few SQEs per completion, and a full SQ is
/// submitted and reused, so this bounds syscalls, not correctness.
const SQ_ENTRIES: u32 = 4096;
/// CQ entries: sized for a loop turn's burst; overflow is kept by the kernel and counted.
const CQ_ENTRIES: u32 = 16384;

/// The user-facing error for a failed bind or listen on `addr`.
fn bind_error(addr: SocketAddrV4, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => Error::PortInUse(addr.into()),
        Some(libc::EADDRNOTAVAIL) => Error::BadFlag(format!(
            "--host {}: no interface of this machine has that address",
            addr.ip()
        )),
        _ => Error::io(format!("listening on {addr}"), e),
    }
}

/// Plans, binds and prints how it planned; the listeners come back in shard order.
fn prepare(args: &ServerArgs) -> Result<(Plan, Vec<Vec<std::os::fd::OwnedFd>>)> {
    let limits = HostLimits::read().map_err(|e| Error::io("reading host limits", e))?;
    let cpus = sys::allowed_cpus().map_err(|e| Error::io("sched_getaffinity", e))?;
    let request = plan::Request {
        max_conns: args.max_conns,
        cores: args.cores,
        ports: args.ports.len(),
    };
    let plan = plan::plan(&request, &cpus, &limits)?;
    for port in args.ports.ports() {
        let addr = SocketAddrV4::new(args.host, *port);
        if sys::port_in_use(addr).map_err(|e| bind_error(addr, e))? {
            return Err(Error::PortInUse(addr.into()));
        }
    }
    let mut listeners = Vec::with_capacity(plan.shards());
    for _ in 0..plan.shards() {
        let mut mine = Vec::with_capacity(args.ports.len());
        for port in args.ports.ports() {
            let addr = SocketAddrV4::new(args.host, *port);
            mine.push(
                sys::reuseport_listener(addr).map_err(|e| match e.raw_os_error() {
                    Some(libc::EADDRINUSE) => Error::PortInUse(addr.into()),
                    Some(libc::EADDRNOTAVAIL) => Error::BadFlag(format!(
                        "--host {}: no interface of this machine has that address",
                        args.host
                    )),
                    _ => Error::io(format!("listening on {addr}"), e),
                })?,
            );
        }
        listeners.push(mine);
    }
    Ok((plan, listeners))
}

/// Runs the server until SIGINT/SIGTERM; returns the summary it printed.
pub fn run(cfg: &UringConfig) -> Result<Summary> {
    let args = &cfg.server;
    if !cfg.bufs.is_power_of_two() || cfg.bufs > 32768 {
        return Err(Error::BadFlag(format!(
            "--bufs {} must be a power of two from 1 to 32768",
            cfg.bufs
        )));
    }
    if cfg.buf_size == 0 {
        return Err(Error::BadFlag("--buf-size must be at least 1".into()));
    }
    if !(args.shutdown_timeout.is_finite() && args.shutdown_timeout >= 0.0) {
        return Err(Error::BadFlag(
            "--shutdown-timeout must be a number of seconds >= 0".into(),
        ));
    }
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    let (plan, listeners) = prepare(args)?;
    eprintln!("uring-server: {}", plan.describe());
    for w in &plan.warnings {
        eprintln!("uring-server: warning: {w}");
    }

    let started = Instant::now();
    let mut shards = Vec::with_capacity(plan.shards());
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, std::io::Result<()>)>();
    for (index, mine) in listeners.into_iter().enumerate() {
        let wake = sys::eventfd().map_err(|e| Error::io("eventfd", e))?;
        let wake_fd = wake.as_raw_fd();
        let counters = Arc::new(SharedCounters::default());
        let shard_cfg = ShardConfig {
            index,
            ring: RingConfig {
                sq_entries: SQ_ENTRIES,
                cq_entries: CQ_ENTRIES,
                fixed_files: plan.table_slots,
                bufs: Some((cfg.bufs, cfg.buf_size)),
            },
            listeners: mine,
            wake,
            shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
            counters: counters.clone(),
        };
        let cpu = plan.shard_cpus[index];
        let tx = ready_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("shard-{index}"))
            .spawn(move || -> std::io::Result<Counters> {
                let setup = sys::pin_current_thread(cpu).and_then(|()| Shard::new(shard_cfg));
                match setup {
                    Ok(shard) => {
                        let _ = tx.send((index, Ok(())));
                        shard.run()
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = tx.send((index, Err(e)));
                        Err(std::io::Error::other(msg))
                    }
                }
            })
            .map_err(|e| Error::io("spawning a shard thread", e))?;
        shards.push((handle, counters, wake_fd));
    }
    drop(ready_tx);

    let mut failure = None;
    for _ in 0..shards.len() {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((index, Err(e))) => {
                failure.get_or_insert(Error::Shard {
                    shard: index,
                    reason: format!("setting up its ring: {e}"),
                });
            }
            Err(_) => break,
        }
    }
    if failure.is_none() {
        println!(
            "listening on {}:{} ({} ports), {} shards on cores {}",
            args.host,
            args.ports,
            args.ports.len(),
            plan.shards(),
            plan.cpus_label()
        );
        let _ = std::io::stdout().flush();
        failure = supervise(args, &shards, started);
    }

    for (_, _, wake_fd) in &shards {
        // A shard that has already stopped no longer reads its eventfd; that is fine.
        let _ = sys::eventfd_wake(*wake_fd);
    }
    let mut per_shard = Vec::with_capacity(shards.len());
    for (index, (handle, counters, _)) in shards.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(c)) => per_shard.push(c),
            Ok(Err(e)) => {
                per_shard.push(counters.snapshot());
                failure.get_or_insert(Error::Shard {
                    shard: index,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                per_shard.push(counters.snapshot());
                failure.get_or_insert(Error::Shard {
                    shard: index,
                    reason: "panicked".into(),
                });
            }
        }
    }
    let (user, sys_s) = sys::process_cpu_times();
    let summary = Summary {
        engine: "uring",
        duration_s: started.elapsed().as_secs_f64(),
        shards: per_shard.len(),
        cpu_user_s: user,
        cpu_sys_s: sys_s,
        totals: Counters::sum(&per_shard),
        per_shard,
    };
    println!("{}", summary.human());
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

type ShardHandle = (
    thread::JoinHandle<std::io::Result<Counters>>,
    Arc<SharedCounters>,
    std::os::fd::RawFd,
);

/// Prints stats each second until a stop signal or a shard that ended on its own.
fn supervise(args: &ServerArgs, shards: &[ShardHandle], started: Instant) -> Option<Error> {
    let mut prev = Counters::default();
    let mut prev_t = Instant::now();
    let mut next_tick = prev_t + Duration::from_secs(1);
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match sys::wait_stop_signal(wait) {
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(e) => return Some(Error::io("sigtimedwait", e)),
        }
        if let Some(index) = shards.iter().position(|(h, _, _)| h.is_finished()) {
            return Some(Error::Shard {
                shard: index,
                reason: "stopped on its own".into(),
            });
        }
        let now_t = Instant::now();
        if now_t >= next_tick {
            next_tick += Duration::from_secs(1);
            if args.stats {
                let snaps: Vec<Counters> = shards.iter().map(|(_, c, _)| c.snapshot()).collect();
                let now = Counters::sum(&snaps);
                println!(
                    "{}",
                    stats::stats_line(started.elapsed(), &now, &prev, now_t - prev_t)
                );
                let _ = std::io::stdout().flush();
                prev = now;
                prev_t = now_t;
            }
        }
    }
}
