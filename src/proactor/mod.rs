//! The Proactor: an io_uring echo server. Each shard is a pinned thread owning one ring, its
//! listeners, its connections and its provided buffers; `server` does the rest.

pub mod aof;
pub mod conn;
#[cfg(any(test, fuzzing))]
pub mod conn_check;
pub mod group;
pub mod log;
pub mod shard;

use std::io;
use std::time::Duration;

use crate::cli::{self, UringArgs};
use crate::error::{Error, Result};
use crate::plan::{EngineKind, Plan};
use crate::server::{self, Engine, Output, ShardCtx};
use crate::stats::{Counters, Summary};
use crate::sys;
use crate::uring::probe::{self, Need};
use crate::uring::{CQ_ENTRIES, RingConfig, SQ_ENTRIES};
use shard::Shard;

/// What each io_uring shard is built with, beside what `ShardCtx` hands it.
#[derive(Debug, Clone)]
struct UringConfig {
    /// Provided buffers per shard (a power of two, at most 32768) and their size.
    bufs: u16,
    buf_size: u32,
    /// Fixed-file slots per ring, from the plan.
    table_slots: u32,
    batch_usec: u32,
}

impl UringConfig {
    fn new(args: &UringArgs, plan: &Plan) -> UringConfig {
        UringConfig {
            bufs: args.bufs,
            buf_size: args.buf_size,
            table_slots: plan.table_slots,
            batch_usec: batch_usec(args),
        }
    }
}

/// `--batch-usec` as given; when not given, the default where the kernel has the minimum
/// wait (6.12+), else off: the default must not make an older kernel refuse to start.
fn batch_usec(args: &UringArgs) -> u32 {
    match args.server.batch_usec {
        Some(usec) => usec,
        None if probe::has(Need::MinTimeout) => cli::default_batch_usec(EngineKind::Uring),
        None => {
            eprintln!(
                "uring-server: batched waits off: they need {}",
                Need::MinTimeout.describe()
            );
            0
        }
    }
}

impl Engine for UringConfig {
    const NAME: &'static str = "uring";
    const KIND: EngineKind = EngineKind::Uring;

    fn batch_usec(&self) -> u32 {
        self.batch_usec
    }

    fn run_thread(
        &self,
        ctxs: Vec<ShardCtx>,
        ready: &mut dyn FnMut(),
    ) -> io::Result<Vec<Counters>> {
        let shared = ctxs.len() > 1;
        let ring = |batch_usec| RingConfig {
            sq_entries: SQ_ENTRIES,
            cq_entries: CQ_ENTRIES,
            fixed_files: self.table_slots,
            bufs: Some((self.bufs, self.buf_size)),
            // A thread of several rings waits in epoll, not in a ring (`group`).
            batch_usec: if shared { 0 } else { batch_usec },
            notify: None,
        };
        let shards = ctxs
            .into_iter()
            .map(|ctx| {
                let cfg = ring(ctx.batch_usec);
                Shard::new(ctx, cfg, shared)
            })
            .collect::<io::Result<Vec<_>>>()?;
        ready();
        if shared {
            let batch =
                (self.batch_usec > 0).then(|| Duration::from_micros(self.batch_usec.into()));
            group::run(shards, batch)
        } else {
            let [shard] = <[Shard; 1]>::try_from(shards).unwrap_or_else(|_| unreachable!());
            Ok(vec![shard.run()?])
        }
    }
}

/// Checks the flags and plans, starting nothing (`--check-config`, and the start of `run`).
pub fn check(args: &UringArgs) -> Result<Plan> {
    if !args.bufs.is_power_of_two() || args.bufs > 32768 {
        return Err(Error::BadFlag(format!(
            "--bufs {} must be a power of two from 1 to 32768",
            args.bufs
        )));
    }
    if args.buf_size == 0 {
        return Err(Error::BadFlag("--buf-size must be at least 1".into()));
    }
    server::validate(&args.server)?;
    server::make_plan(&args.server, EngineKind::Uring, args.rings_per_thread)
}

/// Runs the server until SIGINT/SIGTERM; returns the summary it printed.
pub fn run(args: &UringArgs) -> Result<Summary> {
    let plan = check(args)?;
    let pid_file = server::PidFile::claim(&args.server)?;
    sys::block_stop_signals().map_err(|e| Error::io("blocking signals", e))?;
    server::check_ports(&args.server)?;
    let backlog = shard::listen_backlog(plan.table_slots, args.server.ports.len());
    let listeners = server::bind_listeners(&args.server, plan.shards(), false, backlog)?;
    server::print_plan("uring-server", &plan);
    server::serve(
        &UringConfig::new(args, &plan),
        &args.server,
        &plan,
        &plan.threads(),
        listeners,
        Output::Human,
        server::local_gate(&args.server),
        pid_file,
    )
}
