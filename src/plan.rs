//! Shard planning and preflight: from the connection target, the cores and the host limits to
//! a number of shards and their fixed-file tables, or an error that names the limit and the fix.
//! Pure code: the limits come in as values, so every message is unit-tested.

use crate::cli::Model;
use crate::error::Error;
use crate::sys::limits::{HostLimits, TaskLimits};

/// The kernel's cap on one ring's fixed-file table (IORING_MAX_FIXED_FILES).
pub const MAX_FIXED_FILES: u64 = 1 << 20;
/// Planned fill of a shard's table. SO_REUSEPORT spreads connections by hash, not evenly, and
/// accepting pauses a little below a full table (a full table makes a multishot accept fail
/// with -ENFILE and drop that connection), so a shard is planned for 80 % of its table.
const PLAN_FILL_PCT: u64 = 80;
/// File descriptors kept free for everything that is not a listener, eventfd, ring or epoll fd.
const FD_RESERVE: u64 = 64;
/// Connections one load-generator ring is planned for at most (its fixed-file table is also
/// capped by RLIMIT_NOFILE: see `load_shards`).
const LOAD_CONNS_PER_RING: u64 = 16_000;
/// Kernel memory one server-side connection costs, measured here: half of 7.8 KB per idle
/// loopback pair, plus about 870 B for its armed multishot recv (ARCHITECTURE.md, measured
/// facts).
pub const KERNEL_BYTES_PER_CONN: u64 = 4_800;
/// Connections per bucket of the kernel's established hash above which the server warns.
const EHASH_CHAIN_WARN: u64 = 2;
/// The largest net.ipv4.tcp_child_ehash_entries the kernel takes.
const EHASH_CHILD_MAX: u64 = 1 << 24;
/// Below this somaxconn, connect bursts overflow the backlog (each overflow: a 1 s SYN retransmit).
const GOOD_SOMAXCONN: u64 = 4096;

/// Which engine a plan is for: they meet the fd limit differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Connections are direct descriptors: the limit caps each ring's table, so more rings.
    Uring,
    /// Connections are fds: the limit caps each process, so more worker processes.
    Epoll,
}

/// What a server was asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub engine: EngineKind,
    pub max_conns: Option<u64>,
    pub cores: Option<usize>,
    pub ports: usize,
    /// Uring: the rings one thread drives where a core needs several (0: all of them).
    pub rings_per_thread: usize,
}

/// How a server will run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub max_conns: u64,
    /// The CPU each shard is pinned to; its length is the number of shards.
    pub shard_cpus: Vec<usize>,
    /// The distinct CPUs used, ascending.
    pub cpus: Vec<usize>,
    /// Slots in each shard's fixed-file table (Uring).
    pub table_slots: u32,
    /// Worker processes (Epoll; 1 means the shards are threads of the server process).
    pub workers: usize,
    /// The most connections one shard holds before it stops accepting (Epoll): its share of
    /// its process's fds. 0 for Uring, whose shards are bounded by `table_slots`.
    pub shard_cap: u64,
    /// Connections each shard is planned to hold.
    pub per_shard: u64,
    /// Shards (rings) one thread drives: 1, or up to all of a core's (Uring).
    pub rings_per_thread: usize,
    /// Redis over worker processes (Epoll): one more process holds the keyspace, set by the
    /// engine (the plan itself knows no protocol).
    pub keyspace_owner: bool,
    /// Things the user should know that do not stop the server.
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn shards(&self) -> usize {
        self.shard_cpus.len()
    }

    /// "0-1", "0,2,5": the CPUs in the compact form the ready line prints.
    pub fn cpus_label(&self) -> String {
        compact_list(&self.cpus)
    }

    /// The threads to run, in order: each one's CPU and the shards it drives.
    pub fn threads(&self) -> Vec<(usize, Vec<usize>)> {
        let mut threads = Vec::new();
        for &cpu in &self.cpus {
            let mine: Vec<usize> = (0..self.shards())
                .filter(|&i| self.shard_cpus[i] == cpu)
                .collect();
            for group in mine.chunks(self.rings_per_thread.max(1)) {
                threads.push((cpu, group.to_vec()));
            }
        }
        threads
    }

    /// How the rings meet the threads, and why (a clause of `describe`).
    fn threading(&self, per_core: usize) -> String {
        if per_core == 1 {
            return "one ring and one thread per core".into();
        }
        let why = format!(
            "a ring's table is capped at RLIMIT_NOFILE ({} here)",
            self.table_slots
        );
        if self.rings_per_thread >= per_core {
            format!("one thread per core drives its {per_core} rings: {why}")
        } else if self.rings_per_thread == 1 {
            format!("a thread per ring, {per_core} per core (--rings-per-thread 1): {why}")
        } else {
            format!(
                "{} threads per core of up to {} rings (--rings-per-thread): {why}",
                per_core.div_ceil(self.rings_per_thread),
                self.rings_per_thread
            )
        }
    }

    /// One line on how the server planned, printed at start.
    pub fn describe(&self) -> String {
        let per_core = self.shards() / self.cpus.len().max(1);
        if self.workers > 1 {
            format!(
                "plan: {} connections -> {} worker processes of one shard each ({} per core; an \
                 epoll process holds at most RLIMIT_NOFILE fds){}, {} per worker planned",
                self.max_conns,
                self.workers,
                per_core,
                match self.keyspace_owner {
                    true => " and a keyspace owner",
                    false => "",
                },
                self.per_shard
            )
        } else if self.table_slots > 0 {
            format!(
                "plan: {} connections -> {} shards ({} per core) x {} fixed-file slots, {} per shard \
                 planned; {}",
                self.max_conns,
                self.shards(),
                per_core,
                self.table_slots,
                self.per_shard,
                self.threading(per_core)
            )
        } else {
            format!(
                "plan: {} connections -> {} shards ({} per core) in one process, {} per shard planned",
                self.max_conns,
                self.shards(),
                per_core,
                self.per_shard
            )
        }
    }
}

/// "0-3" for a run, "0,2,5" otherwise.
pub fn compact_list(items: &[usize]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [first, .., last] if last - first + 1 == items.len() => format!("{first}-{last}"),
        _ => items
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// File descriptors a process of `shards` shards holds besides its connections: per shard a
/// listener per port, an eventfd and its ring or epoll fd; and FD_RESERVE.
fn fixed_fds(shards: u64, ports: u64) -> u64 {
    shards * (ports + 2) + FD_RESERVE
}

/// The connections a table (or fd budget) of `slots` is planned to hold.
fn planned_fill(slots: u64) -> u64 {
    slots * PLAN_FILL_PCT / 100
}

/// The plan of one of the Reactor's worker processes: the single shard on `cpu` its master
/// started, holding at most `cap` connections (the master's `shard_cap`).
pub fn worker(cpu: usize, cap: u64) -> Plan {
    Plan {
        max_conns: cap,
        shard_cpus: vec![cpu],
        cpus: vec![cpu],
        table_slots: 0,
        workers: 1,
        per_shard: cap,
        shard_cap: cap,
        rings_per_thread: 1,
        keyspace_owner: false,
        warnings: Vec::new(),
    }
}

/// How many rings (one thread each) the load generator spreads `conns` connections over on
/// `cores` cores: enough that none holds more than its planned fill of the fd limit (its
/// fixed-file table's cap) or LOAD_CONNS_PER_RING, at least one per core, at most one per
/// connection.
pub fn load_shards(conns: u64, cores: usize, limits: &HostLimits) -> usize {
    let per_ring = LOAD_CONNS_PER_RING.min(planned_fill(limits.nofile_soft));
    let needed = conns.div_ceil(per_ring) as usize;
    needed.max(cores).min(conns as usize)
}

/// Plans the shards for `req` on a host with `limits` whose allowed CPUs are `allowed_cpus`.
pub fn plan(req: &Request, allowed_cpus: &[usize], limits: &HostLimits) -> Result<Plan, Error> {
    let mut warnings = Vec::new();
    if allowed_cpus.is_empty() {
        return Err(Error::BadFlag("no CPU is available to this process".into()));
    }
    let cores = match req.cores {
        Some(0) => return Err(Error::BadFlag("--cores must be at least 1".into())),
        Some(n) if n > allowed_cpus.len() => {
            warnings.push(format!(
                "--cores {n} asked, but this process may use {} CPUs ({}): using those",
                allowed_cpus.len(),
                compact_list(allowed_cpus)
            ));
            allowed_cpus.len()
        }
        Some(n) => n,
        None => allowed_cpus.len(),
    };
    let cpus = allowed_cpus[..cores].to_vec();

    if limits.nofile_soft < 256 {
        return Err(Error::Limit {
            what: format!(
                "RLIMIT_NOFILE is {} (hard {}), which caps every process's fds and each io_uring \
                 fixed-file table",
                limits.nofile_soft, limits.nofile_hard
            ),
            fix: "run where the fd limit is at least 256 (`ulimit -n`)".into(),
        });
    }
    let ports = req.ports as u64;
    let (max_conns, shards, workers, table_slots, shard_cap) = match req.engine {
        EngineKind::Uring => {
            let table_cap = limits.nofile_soft.min(MAX_FIXED_FILES);
            let per_shard_cap = planned_fill(table_cap);
            let max_conns = req.max_conns.unwrap_or(per_shard_cap * cores as u64);
            let needed = max_conns.div_ceil(per_shard_cap.max(1)) as usize;
            let shards = needed.max(cores).div_ceil(cores) * cores;
            // Connections are direct descriptors, but each shard's own fds are real.
            let fds = fixed_fds(shards as u64, ports);
            if fds > limits.nofile_soft {
                let max_ports = (limits.nofile_soft.saturating_sub(FD_RESERVE) / shards as u64)
                    .saturating_sub(2);
                return Err(too_many_fds(
                    format!("{shards} shards x ({ports} ports + 2) need {fds} file descriptors"),
                    limits,
                    max_ports,
                ));
            }
            (max_conns, shards, 1, table_cap as u32, 0)
        }
        EngineKind::Epoll => {
            // One process with a shard per core holds what its fd limit leaves after the
            // shards' own fds.
            let free = limits
                .nofile_soft
                .saturating_sub(fixed_fds(cores as u64, ports));
            let one_process = planned_fill(free);
            let max_conns = req.max_conns.unwrap_or(one_process.max(1));
            if max_conns <= one_process {
                (max_conns, cores, 1, 0, free / cores as u64)
            } else {
                // Worker processes of one shard each, nginx style.
                let free = limits.nofile_soft.saturating_sub(fixed_fds(1, ports));
                let per_worker = planned_fill(free);
                if per_worker < 64 {
                    let max_ports = limits.nofile_soft.saturating_sub(FD_RESERVE + 2 + 80);
                    return Err(too_many_fds(
                        format!("{ports} listeners per worker leave almost no fds for connections"),
                        limits,
                        max_ports,
                    ));
                }
                let workers = max_conns.div_ceil(per_worker) as usize;
                let workers = workers.max(cores).div_ceil(cores) * cores;
                (max_conns, workers, workers, 0, free)
            }
        }
    };
    if max_conns == 0 {
        return Err(Error::BadFlag("--max-conns must be at least 1".into()));
    }
    let per_shard = max_conns.div_ceil(shards as u64);
    let per_core = shards / cores;
    let rings_per_thread = match (req.engine, req.rings_per_thread) {
        (EngineKind::Epoll, _) => 1,
        (EngineKind::Uring, 0) => per_core,
        (EngineKind::Uring, n) => n.min(per_core),
    };

    let kernel_bytes = max_conns * KERNEL_BYTES_PER_CONN;
    if limits.mem_total > 0 && kernel_bytes > limits.mem_total / 10 * 8 {
        return Err(Error::Limit {
            what: format!(
                "{max_conns} connections need about {} MB of kernel memory, above 80 % of this host's {} MB",
                kernel_bytes / 1_000_000,
                limits.mem_total / 1_000_000
            ),
            fix: "lower --max-conns or run on a host with more memory".into(),
        });
    }
    let files_free = limits.file_max.saturating_sub(limits.files_open);
    if max_conns > files_free {
        warnings.push(format!(
            "fs.file-max {} with {} files open leaves room for {files_free} sockets, below {max_conns}; \
             raise it with `sysctl -w fs.file-max={}` (scripts/tune-host.sh does)",
            limits.file_max,
            limits.files_open,
            (limits.files_open + 2 * max_conns).max(limits.file_max)
        ));
    }
    if limits.somaxconn < GOOD_SOMAXCONN {
        warnings.push(format!(
            "net.core.somaxconn is {}: every listen backlog is capped there, and a connect burst \
             beyond it costs 1 s SYN retransmits; raise it with `sysctl -w net.core.somaxconn=65535`",
            limits.somaxconn
        ));
    }
    let range = u64::from(limits.port_range.1.saturating_sub(limits.port_range.0)) + 1;
    let one_source = range * req.ports as u64;
    if max_conns > one_source {
        warnings.push(format!(
            "a client from one source address reaches at most {one_source} connections here \
             ({} ports x {range} ephemeral ports, net.ipv4.ip_local_port_range, which IPv6 uses \
             too); to reach {max_conns} clients need more --ports or several source addresses \
             (on loopback, IPv4 has all of 127.0.0.0/8, IPv6 only ::1 unless more are added)",
            req.ports
        ));
    }
    if let Some(buckets) = limits.ehash_entries
        && max_conns > EHASH_CHAIN_WARN * buckets
    {
        warnings.push(format!(
            "the kernel's established-connection hash table has {buckets} buckets \
             (net.ipv4.tcp_ehash_entries): at {max_conns} connections every received packet's \
             socket lookup walks a chain of about {} sockets, twice that with loopback clients in \
             the same network namespace. It is sized at boot (`thash_entries=` on the kernel \
             command line); a network namespace created after `sysctl -w \
             net.ipv4.tcp_child_ehash_entries={}` gets its own (scripts/c1000k.sh runs in one)",
            max_conns.div_ceil(buckets),
            (2 * max_conns).next_power_of_two().min(EHASH_CHILD_MAX)
        ));
    }
    const TCP_MEM_FOR_1M: u64 = 1_500_000;
    // Unknown (None) inside a network namespace other than the first: not checked there.
    if let Some([_, pressure, _]) = limits.tcp_mem
        && max_conns >= 500_000
        && pressure < TCP_MEM_FOR_1M * max_conns / 1_000_000
    {
        warnings.push(format!(
            "net.ipv4.tcp_mem pressure is {pressure} pages: {max_conns} connections with data in flight may \
             enter TCP memory pressure; `sysctl -w net.ipv4.tcp_mem='1500000 2000000 3000000'` held 1M here",
        ));
    }

    Ok(Plan {
        max_conns,
        shard_cpus: (0..shards).map(|i| cpus[i % cores]).collect(),
        cpus,
        table_slots,
        workers,
        shard_cap,
        per_shard,
        rings_per_thread,
        keyspace_owner: false,
        warnings,
    })
}

fn too_many_fds(what: String, limits: &HostLimits, max_ports: u64) -> Error {
    Error::Limit {
        what: format!("{what}, above RLIMIT_NOFILE {}", limits.nofile_soft),
        fix: format!(
            "use at most {max_ports} ports at this --max-conns, or a lower --max-conns (the fd \
             limit cannot be raised without CAP_SYS_RESOURCE)"
        ),
    }
}

/// select(2)'s fd_set holds only fds below this (glibc's FD_SETSIZE).
pub const FD_SETSIZE: u64 = libc::FD_SETSIZE as u64;
/// Threads (or processes) a model leaves the host for everything else.
const TASK_RESERVE: u64 = 256;
/// Memory a forked child costs beyond what it shares with its parent (page tables, its
/// stack, the pages it writes): a planning figure; `cargo bench --bench models` measures it.
const FORK_CHILD_BYTES: u64 = 512 << 10;
/// The read buffer of a model's blocking connection (thread, fork): echo needs no more.
pub const MODEL_BUF_BYTES: usize = 16 << 10;
/// Share of MemTotal a model may plan to use for its threads or processes.
const MODEL_MEM_PCT: u64 = 50;

/// What model-server was asked for.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    pub model: Model,
    pub max_conns: Option<u64>,
    pub ports: usize,
    /// Worker threads of the pool models.
    pub threads: usize,
    /// Stack of each thread a model starts, in KiB.
    pub stack_kib: usize,
}

/// How a model will run: what it holds here, and the wall that stops it there.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPlan {
    pub model: Model,
    /// The most connections it holds at once on this host.
    pub holds: u64,
    /// What stops it at `holds`.
    pub wall: String,
    /// What it runs for: `--max-conns`, or `holds`.
    pub max_conns: u64,
    /// Threads and processes it uses at most: the threads of model-server's process, its
    /// supervising main thread included, and the processes, itself included.
    pub threads: u64,
    pub processes: u64,
}

impl ModelPlan {
    pub fn describe(&self) -> String {
        format!(
            "model {}: holds {} connections here ({}); runs for {}, with at most {} threads \
             and {} processes",
            self.model, self.holds, self.wall, self.max_conns, self.threads, self.processes
        )
    }
}

/// Plans `req.model` (not `epoll-et` or `uring`, which plan as their servers do): what it
/// holds within the fd limit, FD_SETSIZE, the threads or processes the host allows and
/// memory; an error naming the wall if `--max-conns` is beyond it.
pub fn plan_model(
    req: &ModelRequest,
    limits: &HostLimits,
    tasks: &TaskLimits,
) -> Result<ModelPlan, Error> {
    let ports = req.ports as u64;
    // One process holds every connection's fd, its listeners and a few of its own.
    let fds = limits.nofile_soft.saturating_sub(ports + FD_RESERVE);
    let fd_wall = (
        fds,
        format!(
            "RLIMIT_NOFILE {}: one fd per connection",
            limits.nofile_soft
        ),
    );
    let room = tasks.room().saturating_sub(TASK_RESERVE);
    let task_wall = |what: &str| {
        (
            room,
            format!(
                "{what}: kernel.threads-max {}, kernel.pid_max {}, {} running{}",
                tasks.threads_max,
                tasks.pid_max,
                tasks.tasks_now,
                tasks
                    .nproc
                    .map(|n| format!(", RLIMIT_NPROC {n}"))
                    .unwrap_or_default()
            ),
        )
    };
    let mem = limits.mem_total * MODEL_MEM_PCT / 100;
    let lowest = |walls: Vec<(u64, String)>| walls.into_iter().min_by_key(|w| w.0).unwrap();
    let pool = req.threads as u64;
    let thread_bytes = (req.stack_kib * 1024 + MODEL_BUF_BYTES) as u64;
    let (holds, wall, threads, processes) = match req.model {
        Model::Iterative => {
            let wall = format!(
                "it serves one connection at a time; the others wait in the listen backlog, at \
                 most net.core.somaxconn {}",
                limits.somaxconn
            );
            (1, wall, 1, 1)
        }
        Model::Fork => {
            let (n, wall) = lowest(vec![
                task_wall("a process per connection"),
                (
                    mem / FORK_CHILD_BYTES,
                    format!(
                        "{} KiB a child, within {MODEL_MEM_PCT} % of MemTotal",
                        FORK_CHILD_BYTES >> 10
                    ),
                ),
            ]);
            (n, wall, 1, n + 1)
        }
        Model::Thread | Model::PosixAio => {
            let what = match req.model {
                Model::Thread => "a thread per connection",
                _ => "glibc's AIO runs each pending read on a thread",
            };
            let (n, wall) = lowest(vec![
                fd_wall,
                task_wall(what),
                (
                    mem / thread_bytes,
                    format!(
                        "{} KiB a thread (--stack-kib and its buffer), within {MODEL_MEM_PCT} % \
                         of MemTotal",
                        thread_bytes >> 10
                    ),
                ),
            ]);
            (n, wall, n + 1, 1)
        }
        Model::Select => {
            // stdin, stdout, stderr, the listeners, the stop eventfd and the counters'
            // memfd sit below the connections.
            let below = FD_SETSIZE.saturating_sub(3 + ports + 2);
            let (n, wall) = lowest(vec![
                fd_wall,
                (
                    below,
                    format!(
                        "FD_SETSIZE {FD_SETSIZE}: an fd_set holds only fds below it, and fds \
                         at or above it are refused"
                    ),
                ),
            ]);
            (n, wall, 1, 1)
        }
        Model::Poll | Model::EpollLt | Model::Sigio => (fds, fd_wall.1, 1, 1),
        Model::HalfSyncHalfReactor | Model::SimProactor => (fds, fd_wall.1, 1 + pool, 1),
        Model::LeaderFollowers => (fds, fd_wall.1, pool, 1),
        Model::EpollEt | Model::Uring => {
            unreachable!("{} is planned by its own server", req.model)
        }
    };
    if threads > 1 && threads.saturating_sub(1) > room.max(1) {
        let (_, wall) = task_wall("the pool's threads");
        return Err(Error::Limit {
            what: format!("--threads {pool} is more than the host lets start ({wall})"),
            fix: "lower --threads".into(),
        });
    }
    let max_conns = req.max_conns.unwrap_or(holds);
    if max_conns > holds {
        let fix = match req.model {
            Model::Iterative => "that is the model: any other holds more".to_string(),
            Model::Select => "lower --max-conns, or use --model poll or epoll-lt, which have no \
                              FD_SETSIZE"
                .to_string(),
            _ if wall.starts_with("RLIMIT_NOFILE") => format!(
                "lower --max-conns, raise RLIMIT_NOFILE (its hard limit is {} here), or use \
                 --model uring, whose connections take no fd",
                limits.nofile_hard
            ),
            _ => "lower --max-conns, raise the limit named, or use a model with a fixed number \
                  of threads (poll, epoll-lt, leader-followers)"
                .to_string(),
        };
        return Err(Error::Limit {
            what: format!(
                "--model {} holds at most {holds} connections here ({wall}), not --max-conns \
                 {max_conns}",
                req.model
            ),
            fix,
        });
    }
    if max_conns == 0 {
        return Err(Error::BadFlag("--max-conns must be at least 1".into()));
    }
    let (threads, processes) = match req.model {
        Model::Thread | Model::PosixAio => (max_conns + 1, 1),
        Model::Fork => (1, max_conns + 1),
        _ => (threads, processes),
    };
    // The supervisor: model-server's main thread, beside the model's.
    let threads = threads + 1;
    Ok(ModelPlan {
        model: req.model,
        holds,
        wall,
        max_conns,
        threads,
        processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostLimits {
        HostLimits::measured_here()
    }

    fn model(model: Model, max_conns: Option<u64>) -> Result<ModelPlan, Error> {
        let req = ModelRequest {
            model,
            max_conns,
            ports: 1,
            threads: 4,
            stack_kib: 64,
        };
        plan_model(&req, &host(), &TaskLimits::measured_here())
    }

    #[test]
    fn each_model_is_held_by_its_own_wall() {
        let holds = |m| model(m, None).unwrap();
        assert_eq!(holds(Model::Iterative).holds, 1);
        // FD_SETSIZE less stdio, the listener, the stop eventfd and the counters' memfd.
        let select = holds(Model::Select);
        assert_eq!(select.holds, 1024 - 6);
        assert!(
            select.wall.starts_with("FD_SETSIZE 1024"),
            "{}",
            select.wall
        );
        for m in [Model::Poll, Model::EpollLt, Model::Sigio, Model::Thread] {
            let p = holds(m);
            assert_eq!(p.holds, 20_000 - 1 - FD_RESERVE, "{m}");
            assert!(p.wall.starts_with("RLIMIT_NOFILE 20000"), "{m}: {}", p.wall);
        }
        // 512 KiB a child within half of 24 GiB comes before pid_max's 32,768.
        let fork = holds(Model::Fork);
        assert_eq!(fork.holds, 24_576);
        assert!(fork.wall.starts_with("512 KiB a child"), "{}", fork.wall);
        assert_eq!(fork.processes, fork.holds + 1);
        // The connections' threads, the accepting one and the supervisor.
        assert_eq!(holds(Model::Thread).threads, 20_000 - 1 - FD_RESERVE + 2);
        assert_eq!(holds(Model::LeaderFollowers).threads, 4 + 1);
        assert_eq!(holds(Model::HalfSyncHalfReactor).threads, 4 + 2);
        assert_eq!(holds(Model::Poll).threads, 2);
    }

    #[test]
    fn a_target_beyond_the_wall_names_it_and_the_way_past() {
        let err = |m, n| model(m, Some(n)).unwrap_err().to_string();
        let e = err(Model::Select, 2000);
        assert!(e.contains("--model select holds at most 1018"), "{e}");
        assert!(e.contains("use --model poll or epoll-lt"), "{e}");
        let e = err(Model::Poll, 50_000);
        assert!(e.contains("RLIMIT_NOFILE 20000"), "{e}");
        assert!(e.contains("--model uring"), "{e}");
        let e = err(Model::Fork, 40_000);
        assert!(e.contains("512 KiB a child"), "{e}");
        let few = |mut t: TaskLimits| {
            t.pid_max = 4096;
            t
        };
        let tasks = few(TaskLimits::measured_here());
        let req = ModelRequest {
            model: Model::Thread,
            max_conns: Some(5000),
            ports: 1,
            threads: 4,
            stack_kib: 64,
        };
        let e = plan_model(&req, &host(), &tasks).unwrap_err().to_string();
        assert!(
            e.contains("a thread per connection: kernel.threads-max"),
            "{e}"
        );
        assert!(e.contains("kernel.pid_max 4096"), "{e}");
        let e = err(Model::Iterative, 2);
        assert!(e.contains("one connection at a time"), "{e}");
        assert_eq!(model(Model::Poll, Some(10_000)).unwrap().max_conns, 10_000);
        assert!(matches!(
            model(Model::Poll, Some(0)),
            Err(Error::BadFlag(_))
        ));
    }

    fn req(max_conns: Option<u64>, cores: Option<usize>, ports: usize) -> Request {
        Request {
            engine: EngineKind::Uring,
            max_conns,
            cores,
            ports,
            rings_per_thread: 0,
        }
    }

    #[test]
    fn default_is_one_shard_per_core_at_planned_fill() {
        let p = plan(&req(None, None, 1), &[0, 1], &host()).unwrap();
        assert_eq!(p.shard_cpus, vec![0, 1]);
        assert_eq!(p.table_slots, 20_000);
        assert_eq!(p.max_conns, 32_000);
        assert_eq!(p.per_shard, 16_000);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.cpus_label(), "0-1");
    }

    #[test]
    fn above_the_fd_limit_plans_several_shards_per_core() {
        let p = plan(&req(Some(100_000), None, 50), &[0, 1], &host()).unwrap();
        assert_eq!(p.shards(), 8);
        assert_eq!(p.shard_cpus, vec![0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(p.per_shard, 12_500);
        assert!(
            p.describe().contains("8 shards (4 per core)"),
            "{}",
            p.describe()
        );
    }

    #[test]
    fn a_core_s_rings_share_one_thread_unless_asked_otherwise() {
        let p = plan(&req(Some(100_000), None, 50), &[0, 1], &host()).unwrap();
        assert_eq!(
            p.threads(),
            vec![(0, vec![0, 2, 4, 6]), (1, vec![1, 3, 5, 7])]
        );
        assert!(
            p.describe()
                .contains("one thread per core drives its 4 rings: a ring's table is capped"),
            "{}",
            p.describe()
        );
        let split = |n| {
            let r = Request {
                rings_per_thread: n,
                ..req(Some(100_000), None, 50)
            };
            plan(&r, &[0, 1], &host()).unwrap()
        };
        let p = split(1);
        assert_eq!(p.threads().len(), 8);
        assert_eq!(p.threads()[1], (0, vec![2]));
        assert!(p.describe().contains("a thread per ring, 4 per core"));
        let p = split(3);
        assert_eq!(
            p.threads(),
            vec![
                (0, vec![0, 2, 4]),
                (0, vec![6]),
                (1, vec![1, 3, 5]),
                (1, vec![7])
            ]
        );
        assert!(p.describe().contains("2 threads per core of up to 3 rings"));
        // Asking for more than a core has is all of them.
        assert_eq!(split(9).threads().len(), 2);
        let one = plan(&req(None, None, 1), &[0, 1], &host()).unwrap();
        assert_eq!(one.threads(), vec![(0, vec![0]), (1, vec![1])]);
        assert!(one.describe().contains("one ring and one thread per core"));
    }

    #[test]
    fn one_million_fits_with_fifty_ports() {
        let p = plan(&req(Some(1_000_000), Some(2), 50), &[0, 1], &host()).unwrap();
        assert_eq!(p.shards(), 64);
        assert!(p.per_shard <= 16_000);
        // tcp_mem default is too low for 1M: said, not fatal.
        assert!(
            p.warnings.iter().any(|w| w.contains("tcp_mem")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn a_small_established_hash_is_said_with_its_fix() {
        let p = plan(&req(Some(1_000_000), Some(2), 50), &[0, 1], &host()).unwrap();
        let w = p.warnings.iter().find(|w| w.contains("tcp_ehash_entries"));
        let w = w.expect("1M connections over 262144 buckets are warned about");
        assert!(w.contains("262144 buckets"), "{w}");
        assert!(w.contains("a chain of about 4 sockets"), "{w}");
        assert!(w.contains("tcp_child_ehash_entries=2097152"), "{w}");
        let sized = HostLimits {
            ehash_entries: Some(2_097_152),
            ..host()
        };
        let p = plan(&req(Some(1_000_000), Some(2), 50), &[0, 1], &sized).unwrap();
        assert!(!warned(&p, "ehash"), "{:?}", p.warnings);
        let p = plan(&req(Some(100_000), Some(2), 50), &[0, 1], &host()).unwrap();
        assert!(!warned(&p, "ehash"), "{:?}", p.warnings);
    }

    fn warned(p: &Plan, about: &str) -> bool {
        p.warnings.iter().any(|w| w.contains(about))
    }

    #[test]
    fn tcp_mem_unknown_in_a_network_namespace_is_not_checked() {
        let limits = HostLimits {
            tcp_mem: None,
            ..host()
        };
        let p = plan(&req(Some(1_000_000), Some(2), 50), &[0, 1], &limits).unwrap();
        assert_eq!(p.shards(), 64);
        assert!(!warned(&p, "tcp_mem"), "{:?}", p.warnings);
    }

    #[test]
    fn too_many_listener_fds_names_the_limit_and_the_fix() {
        let e = plan(&req(Some(1_000_000), None, 400), &[0, 1], &host()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("RLIMIT_NOFILE 20000"), "{msg}");
        assert!(msg.contains("use at most 309 ports"), "{msg}");
    }

    #[test]
    fn more_cores_than_cpus_is_a_warning_and_uses_what_there_is() {
        let p = plan(&req(None, Some(8), 50), &[0, 1], &host()).unwrap();
        assert_eq!(p.cpus, vec![0, 1]);
        assert!(
            p.warnings[0].contains("--cores 8 asked"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn zero_values_are_flag_errors() {
        assert!(matches!(
            plan(&req(Some(0), None, 1), &[0], &host()),
            Err(Error::BadFlag(_))
        ));
        assert!(matches!(
            plan(&req(None, Some(0), 1), &[0], &host()),
            Err(Error::BadFlag(_))
        ));
    }

    #[test]
    fn memory_beyond_the_host_is_an_error() {
        let mut h = host();
        h.mem_total = 1 << 30;
        let msg = plan(&req(Some(1_000_000), None, 50), &[0, 1], &h)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kernel memory"), "{msg}");
    }

    #[test]
    fn low_somaxconn_and_one_source_reach_are_warnings() {
        let mut h = host();
        h.somaxconn = 128;
        let p = plan(&req(Some(100_000), None, 1), &[0, 1], &h).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("somaxconn is 128")));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("at most 64512 connections"))
        );
    }

    #[test]
    fn tiny_fd_limit_is_an_error() {
        let mut h = host();
        h.nofile_soft = 100;
        let msg = plan(&req(None, None, 1), &[0], &h).unwrap_err().to_string();
        assert!(msg.contains("RLIMIT_NOFILE is 100"), "{msg}");
    }

    fn epoll(max_conns: Option<u64>, ports: usize) -> Request {
        Request {
            engine: EngineKind::Epoll,
            ..req(max_conns, None, ports)
        }
    }

    #[test]
    fn epoll_fits_in_one_process_when_the_fd_limit_allows() {
        let p = plan(&epoll(Some(10_000), 4), &[0, 1], &host()).unwrap();
        assert_eq!((p.shards(), p.workers), (2, 1));
        assert!(p.describe().contains("in one process"), "{}", p.describe());
        let d = plan(&epoll(None, 4), &[0, 1], &host()).unwrap();
        assert_eq!(d.workers, 1);
        assert!(
            d.max_conns > 15_000 && d.max_conns < 16_000,
            "{}",
            d.max_conns
        );
    }

    #[test]
    fn epoll_beyond_one_process_plans_worker_processes() {
        let p = plan(&epoll(Some(100_000), 50), &[0, 1], &host()).unwrap();
        assert_eq!(p.workers, 8);
        assert_eq!(p.shards(), 8);
        assert!(
            p.describe().contains("8 worker processes"),
            "{}",
            p.describe()
        );
        let m = plan(&epoll(Some(1_000_000), 50), &[0, 1], &host()).unwrap();
        assert!(
            m.workers >= 51,
            "an epoll process holds < 20k: {}",
            m.workers
        );
    }

    #[test]
    fn epoll_with_ports_eating_the_fd_limit_says_so() {
        let msg = plan(&epoll(Some(100_000), 19_900), &[0, 1], &host())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("leave almost no fds"), "{msg}");
    }

    #[test]
    fn an_epoll_shard_holds_its_share_of_its_process_fds() {
        // One process, 2 shards x (4 listeners + epoll + eventfd) and the reserve.
        let p = plan(&epoll(Some(10_000), 4), &[0, 1], &host()).unwrap();
        assert_eq!(p.shard_cap, (20_000 - 2 * 6 - 64) / 2);
        // A worker process: one shard, 50 listeners.
        let p = plan(&epoll(Some(100_000), 50), &[0, 1], &host()).unwrap();
        assert_eq!(p.shard_cap, 20_000 - 52 - 64);
        let w = worker(1, p.shard_cap);
        assert_eq!((w.shard_cpus, w.workers, w.shard_cap), (vec![1], 1, 19_884));
        assert_eq!(
            plan(&req(None, None, 1), &[0, 1], &host())
                .unwrap()
                .shard_cap,
            0
        );
    }

    #[test]
    fn the_load_generator_plans_a_ring_per_planned_fill_of_the_fd_limit() {
        assert_eq!(load_shards(100, 2, &host()), 2);
        assert_eq!(load_shards(1, 2, &host()), 1);
        assert_eq!(load_shards(1_000_000, 2, &host()), 63);
        let small = HostLimits {
            nofile_soft: 1_000,
            ..host()
        };
        assert_eq!(load_shards(8_000, 2, &small), 10);
    }

    #[test]
    fn compact_lists() {
        assert_eq!(compact_list(&[3]), "3");
        assert_eq!(compact_list(&[0, 1, 2]), "0-2");
        assert_eq!(compact_list(&[0, 2, 5]), "0,2,5");
    }
}
