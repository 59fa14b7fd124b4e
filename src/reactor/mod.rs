//! The Reactor: an edge-triggered epoll echo server, the baseline the Proactor is measured
//! against. Where one process's fd limit holds the target, the shards are threads of one
//! process; where it does not, they are worker processes (nginx style) under a master.

pub mod conn;
pub mod shard;
pub mod worker;

use std::io;
use std::sync::Arc;

use crate::cli::ServerArgs;
use crate::error::{Error, Result};
use crate::plan::EngineKind;
use crate::server::{self, Engine, Output, ShardCtx};
use crate::stats::{Counters, Summary};
use crate::sys;
use shard::Shard;

/// Runs a worker process's single shard when set (the master passes it; hidden flags).
#[derive(Debug, Clone, Copy)]
pub struct WorkerRole {
    pub index: usize,
    pub cpu: usize,
    pub cap: usize,
    /// The fd of the master's shared connection count (with `--max-conns`).
    pub gate_fd: Option<i32>,
}

#[derive(Debug, Clone)]
pub struct EpollConfig {
    pub server: ServerArgs,
    pub worker: Option<WorkerRole>,
    /// Connections each shard may hold: its share of the process's fds.
    pub cap: usize,
}

impl Engine for EpollConfig {
    const NAME: &'static str = "epoll";
    const KIND: EngineKind = EngineKind::Epoll;

    fn run_shard(&self, ctx: ShardCtx, ready: &mut dyn FnMut()) -> io::Result<Counters> {
        let shard = Shard::new(ctx, self.cap)?;
        ready();
        shard.run()
    }
}

/// Fds a process keeps for what is not a connection.
const FD_RESERVE: u64 = 64;

/// Runs the server (or, with `worker` set, one worker of it) until SIGINT/SIGTERM.
pub fn run(cfg: &mut EpollConfig) -> Result<Summary> {
    server::validate(&cfg.server)?;
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    let limits =
        sys::limits::HostLimits::read().map_err(|e| Error::io("reading host limits", e))?;
    let ports = cfg.server.ports.len() as u64;
    if let Some(role) = cfg.worker {
        // The master's shared count of open connections, when it caps them.
        let gate = match (role.gate_fd, cfg.server.max_conns) {
            (Some(fd), Some(max)) => {
                let shared = sys::SharedCounter::inherit(fd)
                    .map_err(|e| Error::io("mapping the master's connection count", e))?;
                Some(Arc::new(server::Gate::shared(shared, max)))
            }
            _ => None,
        };
        let listeners = server::bind_listeners(&cfg.server, 1, true, sys::LISTEN_BACKLOG)?;
        let plan = crate::plan::Plan {
            max_conns: role.cap as u64,
            shard_cpus: vec![role.cpu],
            cpus: vec![role.cpu],
            table_slots: 0,
            workers: 1,
            per_shard: role.cap as u64,
            warnings: Vec::new(),
        };
        cfg.cap = role.cap;
        let cfg = &*cfg;
        return server::serve(
            cfg,
            &cfg.server,
            &plan,
            &[role.cpu],
            listeners,
            Output::Worker,
            gate,
        );
    }
    let plan = server::make_plan(&cfg.server, EngineKind::Epoll)?;
    server::check_ports(&cfg.server)?;
    server::print_plan("epoll-server", &plan);
    if plan.workers > 1 {
        let cap = limits.nofile_soft.saturating_sub(ports + 2 + FD_RESERVE) as usize;
        return worker::run_master(&cfg.server, &plan, cap);
    }
    let shards = plan.shards() as u64;
    cfg.cap = (limits
        .nofile_soft
        .saturating_sub(shards * (ports + 2) + FD_RESERVE)
        / shards) as usize;
    let listeners = server::bind_listeners(&cfg.server, plan.shards(), true, sys::LISTEN_BACKLOG)?;
    let cfg = &*cfg;
    server::serve(
        cfg,
        &cfg.server,
        &plan,
        &plan.shard_cpus,
        listeners,
        Output::Human,
        server::local_gate(&cfg.server),
    )
}
