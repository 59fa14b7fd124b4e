//! The Reactor: an edge-triggered epoll echo server, the baseline the Proactor is measured
//! against. Where one process's fd limit holds the target, the shards are threads of one
//! process; where it does not, they are worker processes (nginx style) under a master,
//! and Redis's one keyspace is held by one more process, the keyspace owner (`owner`), to
//! which the workers proxy their Redis connections.

pub mod conn;
pub mod frame;
pub mod link;
pub mod log;
pub mod owner;
pub mod shard;
pub mod worker;

use std::io;
use std::sync::Arc;

use crate::cli::{EpollArgs, Proto, ServerArgs};
use crate::error::{Error, Result};
use crate::plan::{self, EngineKind, Plan};
use crate::server::{self, Engine, Output, ShardCtx};
use crate::stats::{Counters, Summary};
use crate::sys;
use shard::Shard;

/// What each epoll shard is built with, beside what `ShardCtx` hands it.
#[derive(Debug, Clone)]
struct EpollConfig {
    /// Connections each shard may hold: its share of the process's fds.
    cap: usize,
    batch_usec: u32,
    /// A Redis worker: the keyspace owner's socket, to which its connections are proxied.
    owner: Option<String>,
}

impl EpollConfig {
    fn new(args: &ServerArgs, plan: &Plan) -> EpollConfig {
        EpollConfig {
            cap: plan.shard_cap as usize,
            batch_usec: args.batch_usec(EngineKind::Epoll),
            owner: None,
        }
    }
}

impl Engine for EpollConfig {
    const NAME: &'static str = "epoll";
    const KIND: EngineKind = EngineKind::Epoll;

    fn batch_usec(&self) -> u32 {
        self.batch_usec
    }

    fn run_thread(
        &self,
        ctxs: Vec<ShardCtx>,
        ready: &mut dyn FnMut(),
    ) -> io::Result<Vec<Counters>> {
        let [ctx] = <[ShardCtx; 1]>::try_from(ctxs)
            .unwrap_or_else(|c| panic!("a Reactor thread runs one shard, not {}", c.len()));
        let shard = Shard::new(ctx, self.cap, self.owner.as_deref())?;
        ready();
        Ok(vec![shard.run()?])
    }
}

/// Checks the flags and plans, starting nothing (`--check-config`).
pub fn check(args: &EpollArgs) -> Result<Plan> {
    server::validate(&args.server)?;
    make_plan(&args.server)
}

/// The plan; with Redis and worker processes, it has a keyspace owner too.
fn make_plan(args: &ServerArgs) -> Result<Plan> {
    let mut plan = server::make_plan(args, EngineKind::Epoll, 1)?;
    plan.keyspace_owner = args.proto == Proto::Redis && plan.workers > 1;
    Ok(plan)
}

/// Runs the server (or, with the hidden `--worker-*` flags, one worker of it) until
/// SIGINT/SIGTERM.
pub fn run(args: &EpollArgs) -> Result<Summary> {
    server::validate(&args.server)?;
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    if let (Some(name), Some(cpu)) = (&args.keyspace_owner, args.worker_cpu) {
        return run_owner(&args.server, name, cpu);
    }
    if let (Some(_), Some(cpu), Some(cap)) = (args.worker_index, args.worker_cpu, args.worker_cap) {
        return run_worker(
            &args.server,
            cpu,
            cap,
            args.worker_gate_fd,
            args.worker_share_slot,
            args.worker_owner.as_deref(),
        );
    }
    let pid_file = server::PidFile::claim(&args.server)?;
    let plan = make_plan(&args.server)?;
    server::check_ports(&args.server)?;
    server::print_plan("epoll-server", &plan);
    if plan.workers > 1 {
        return worker::run_master(&args.server, &plan, pid_file);
    }
    let listeners = server::bind_listeners(&args.server, plan.shards(), true, sys::LISTEN_BACKLOG)?;
    server::serve(
        &EpollConfig::new(&args.server, &plan),
        &args.server,
        &plan,
        &plan.threads(),
        listeners,
        Output::Human,
        server::local_gate(&args.server),
        pid_file,
    )
}

/// The keyspace owner's nice value: its CFS weight is about 28 workers'.
const OWNER_NICE: i32 = -15;

/// Runs the keyspace owner of a master's Redis workers on `cpu`, listening for their links
/// on the abstract unix socket `name`: the keyspace, the append-only file (replayed here)
/// and the access log are this process's.
fn run_owner(args: &ServerArgs, name: &str, cpu: usize) -> Result<Summary> {
    // Every command of every worker runs here, while up to 32 workers and the clients share
    // its core; at CFS's equal weights it waited in the run queue most of the time: at
    // 1,000,000 connections 40,000-44,000 req/s and seconds-long stalls that had the
    // master kill workers at their stop, against 51,000 at nice -15 (bench/results/README.md).
    if let Err(e) = sys::set_nice(OWNER_NICE) {
        eprintln!(
            "epoll-server keyspace owner: at the workers' priority (nice {OWNER_NICE} needs \
             CAP_SYS_NICE: {e}); with many busy workers on its core it may fall behind"
        );
    }
    let listener = link::listen(name)
        .map_err(|e| Error::io(format!("listening for workers on @{name}"), e))?;
    let plan = plan::worker(cpu, 0);
    server::serve(
        &owner::OwnerEngine,
        args,
        &plan,
        &plan.threads(),
        vec![vec![listener]],
        Output::Worker,
        None,
        None,
    )
}

/// Runs one worker process's single shard on `cpu`, holding at most `cap` connections, for
/// the master that started it (and, with `--max-conns`, counting them in the master's
/// shared counter at `gate_fd`, its own share of it in slot `share`). A Redis worker
/// proxies its connections to the keyspace owner on `owner`.
fn run_worker(
    args: &ServerArgs,
    cpu: usize,
    cap: u64,
    gate_fd: Option<i32>,
    share: Option<usize>,
    owner: Option<&str>,
) -> Result<Summary> {
    let gate = match (gate_fd, args.max_conns) {
        (Some(fd), Some(max)) => {
            // SAFETY: the master passes the fd of the counters it created (`spawn` in
            // worker.rs), inherited across exec; it is taken only here, once.
            let shared = unsafe { sys::SharedCounter::inherit(fd) }
                .map_err(|e| Error::io("mapping the master's connection count", e))?;
            if share.is_some_and(|s| s >= shared.slots()) {
                return Err(Error::BadFlag(
                    "--worker-share-slot beyond the shared count".into(),
                ));
            }
            Some(Arc::new(server::Gate::shared(shared, share, max)))
        }
        _ => None,
    };
    let listeners = server::bind_listeners(args, 1, true, sys::LISTEN_BACKLOG)?;
    let plan = plan::worker(cpu, cap);
    // A Redis worker only carries bytes: the keyspace, the append-only file and the access
    // log are the owner's, so none is opened here.
    let mut local = args.clone();
    if owner.is_some() {
        local.proto = Proto::Echo;
        local.appendonly = None;
        local.maxmemory = None;
        local.access_log = "off".into();
    }
    let args = &local;
    let config = EpollConfig {
        owner: owner.map(str::to_string),
        ..EpollConfig::new(args, &plan)
    };
    server::serve(
        &config,
        args,
        &plan,
        &plan.threads(),
        listeners,
        Output::Worker,
        gate,
        None,
    )
}
