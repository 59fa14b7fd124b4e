//! The Reactor: an edge-triggered epoll echo server, the baseline the Proactor is measured
//! against. Where one process's fd limit holds the target, the shards are threads of one
//! process; where it does not, they are worker processes (nginx style) under a master.

pub mod conn;
pub mod log;
pub mod shard;
pub mod worker;

use std::io;
use std::sync::Arc;

use crate::cli::{EpollArgs, ServerArgs};
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
}

impl EpollConfig {
    fn new(args: &ServerArgs, plan: &Plan) -> EpollConfig {
        EpollConfig {
            cap: plan.shard_cap as usize,
            batch_usec: args.batch_usec(EngineKind::Epoll),
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
        let shard = Shard::new(ctx, self.cap)?;
        ready();
        Ok(vec![shard.run()?])
    }
}

/// Checks the flags and plans, starting nothing (`--check-config`).
pub fn check(args: &EpollArgs) -> Result<Plan> {
    server::validate(&args.server)?;
    let plan = server::make_plan(&args.server, EngineKind::Epoll, 1)?;
    one_keyspace(&args.server, &plan)?;
    Ok(plan)
}

/// Redis serves one keyspace, which the shards of one process share: worker processes
/// would each hold their own, silently disagreeing, so a plan that needs them is refused.
fn one_keyspace(args: &ServerArgs, plan: &Plan) -> Result<()> {
    if args.proto == crate::cli::Proto::Redis && plan.workers > 1 {
        return Err(Error::Limit {
            what: format!(
                "--proto redis serves one keyspace from one process, and {} connections need \
                 {} worker processes here (each holds {})",
                plan.max_conns, plan.workers, plan.shard_cap
            ),
            fix: "lower --max-conns to what one process holds, raise the hard RLIMIT_NOFILE, \
                  or use uring-server (its connections take no fds)"
                .into(),
        });
    }
    Ok(())
}

/// Runs the server (or, with the hidden `--worker-*` flags, one worker of it) until
/// SIGINT/SIGTERM.
pub fn run(args: &EpollArgs) -> Result<Summary> {
    server::validate(&args.server)?;
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    if let (Some(_), Some(cpu), Some(cap)) = (args.worker_index, args.worker_cpu, args.worker_cap) {
        return run_worker(
            &args.server,
            cpu,
            cap,
            args.worker_gate_fd,
            args.worker_share_slot,
        );
    }
    let pid_file = server::PidFile::claim(&args.server)?;
    let plan = server::make_plan(&args.server, EngineKind::Epoll, 1)?;
    one_keyspace(&args.server, &plan)?;
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

/// Runs one worker process's single shard on `cpu`, holding at most `cap` connections, for
/// the master that started it (and, with `--max-conns`, counting them in the master's
/// shared counter at `gate_fd`, its own share of it in slot `share`).
fn run_worker(
    args: &ServerArgs,
    cpu: usize,
    cap: u64,
    gate_fd: Option<i32>,
    share: Option<usize>,
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
    server::serve(
        &EpollConfig::new(args, &plan),
        args,
        &plan,
        &plan.threads(),
        listeners,
        Output::Worker,
        gate,
        None,
    )
}
