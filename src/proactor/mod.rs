//! The Proactor: an io_uring echo server. Each shard is a pinned thread owning one ring, its
//! listeners, its connections and its provided buffers; `server` does the rest.

pub mod conn;
#[cfg(any(test, fuzzing))]
pub mod conn_check;
pub mod shard;

use std::io;

use crate::cli::ServerArgs;
use crate::error::{Error, Result};
use crate::plan::EngineKind;
use crate::server::{self, Engine, Output, ShardCtx};
use crate::stats::{Counters, Summary};
use crate::sys;
use crate::uring::RingConfig;
use shard::Shard;

/// The io_uring engine's own knobs, beside the flags both servers share.
#[derive(Debug, Clone)]
pub struct UringConfig {
    pub server: ServerArgs,
    /// Provided buffers per shard (a power of two, at most 32768) and their size.
    pub bufs: u16,
    pub buf_size: u32,
    /// Fixed-file slots per ring, from the plan.
    pub table_slots: u32,
}

/// SQ entries: a loop turn pushes at most a few SQEs per completion, and a full SQ is
/// submitted and reused, so this bounds syscalls, not correctness.
const SQ_ENTRIES: u32 = 4096;
/// CQ entries: sized for a loop turn's burst; overflow is kept by the kernel and counted.
const CQ_ENTRIES: u32 = 16384;

impl Engine for UringConfig {
    const NAME: &'static str = "uring";
    const KIND: EngineKind = EngineKind::Uring;

    fn run_shard(&self, ctx: ShardCtx, ready: &mut dyn FnMut()) -> io::Result<Counters> {
        let ring = RingConfig {
            sq_entries: SQ_ENTRIES,
            cq_entries: CQ_ENTRIES,
            fixed_files: self.table_slots,
            bufs: Some((self.bufs, self.buf_size)),
            batch_usec: ctx.batch_usec,
        };
        let shard = Shard::new(ctx, ring)?;
        ready();
        shard.run()
    }
}

/// Runs the server until SIGINT/SIGTERM; returns the summary it printed.
pub fn run(cfg: &mut UringConfig) -> Result<Summary> {
    if !cfg.bufs.is_power_of_two() || cfg.bufs > 32768 {
        return Err(Error::BadFlag(format!(
            "--bufs {} must be a power of two from 1 to 32768",
            cfg.bufs
        )));
    }
    if cfg.buf_size == 0 {
        return Err(Error::BadFlag("--buf-size must be at least 1".into()));
    }
    server::validate(&cfg.server)?;
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    let plan = server::make_plan(&cfg.server, EngineKind::Uring)?;
    server::check_ports(&cfg.server)?;
    let backlog = shard::listen_backlog(plan.table_slots, cfg.server.ports.len());
    let listeners = server::bind_listeners(&cfg.server, plan.shards(), false, backlog)?;
    server::print_plan("uring-server", &plan);
    cfg.table_slots = plan.table_slots;
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
