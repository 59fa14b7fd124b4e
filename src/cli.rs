//! The flags of every binary: what both servers share, what each engine adds, the load
//! generator's, the parsing of port and address lists, and the shell completions and man
//! pages made from them.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::plan::EngineKind;
use crate::proto::http::Limits;
use crate::timer::{LINGER, Timeouts};

/// A set of TCP ports: `6000`, `6000-6049`, or `6000,6002,7000-7009`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(Vec<u16>);

impl PortList {
    pub fn ports(&self) -> &[u16] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The most ports one list may name: each costs a listener fd per shard.
pub const MAX_PORTS: usize = 4096;

impl FromStr for PortList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| -> Result<u16, String> {
            match p.trim().parse::<u16>() {
                Ok(0) => Err("port 0 is not a port a client can reach".to_string()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("`{p}` is not a port (1-65535)")),
            }
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (port(a)?, port(b)?);
                    if a > b {
                        return Err(format!("range `{part}` runs backwards"));
                    }
                    out.extend(a..=b);
                }
                None => out.push(port(part)?),
            }
            if out.len() > MAX_PORTS {
                return Err(format!("more than {MAX_PORTS} ports"));
            }
        }
        let mut sorted = out.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("port {} is named twice", w[0]));
        }
        Ok(PortList(out))
    }
}

impl fmt::Display for PortList {
    /// "6000-6049" for a run, the comma list otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.0;
        match p.as_slice() {
            [] => Ok(()),
            [one] => write!(f, "{one}"),
            [first, .., last] if p.windows(2).all(|w| w[1] == w[0] + 1) => {
                write!(f, "{first}-{last}")
            }
            _ => {
                let parts: Vec<String> = p.iter().map(|x| x.to_string()).collect();
                write!(f, "{}", parts.join(","))
            }
        }
    }
}

/// A set of addresses of one family: `127.0.0.1`, a range `127.0.0.1-127.0.0.8`, IPv6 ones
/// (`fd00::1`, `fd00::1-fd00::ff`), or a comma list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrList(pub Vec<IpAddr>);

/// The most addresses one range may span.
const MAX_RANGE: u128 = 65_536;

impl FromStr for AddrList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let ip = |p: &str| {
            p.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("`{p}` is not an IPv4 or IPv6 address"))
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let span = |a: u128, b: u128| {
                        if a > b || b - a >= MAX_RANGE {
                            return Err(format!(
                                "range `{part}` runs backwards or spans more than {MAX_RANGE} addresses"
                            ));
                        }
                        Ok(a..=b)
                    };
                    match (ip(a)?, ip(b)?) {
                        (IpAddr::V4(a), IpAddr::V4(b)) => out.extend(
                            span(a.to_bits().into(), b.to_bits().into())?
                                .map(|n| IpAddr::V4(Ipv4Addr::from_bits(n as u32))),
                        ),
                        (IpAddr::V6(a), IpAddr::V6(b)) => out.extend(
                            span(a.to_bits(), b.to_bits())?
                                .map(|n| IpAddr::V6(Ipv6Addr::from_bits(n))),
                        ),
                        _ => return Err(format!("range `{part}` mixes IPv4 and IPv6")),
                    }
                }
                None => out.push(ip(part)?),
            }
        }
        if out.iter().any(|a| a.is_ipv4() != out[0].is_ipv4()) {
            return Err("the list mixes IPv4 and IPv6 addresses".into());
        }
        Ok(AddrList(out))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    /// Every byte received is sent back, in order.
    Echo,
    /// HTTP/1.1: `GET /plaintext` (and `/`) answers `Hello, World!`; keep-alive, pipelining.
    Http,
    /// The Redis protocol (RESP2): an in-memory database, one keyspace per server, its
    /// replies Redis 7's.
    Redis,
}

/// `--appendfsync`: when the append-only file is fsynced (Redis's policies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// After every write, before its reply is sent (a batch of writes shares one fsync).
    Always,
    /// About once a second: a crash loses at most about the last two seconds of writes.
    Everysec,
    /// Never: the kernel writes the page cache back when it will.
    No,
}

/// memtier_benchmark's `--ratio`: SETs to GETs, `1:10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub sets: u32,
    pub gets: u32,
}

impl FromStr for Ratio {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not SETS:GETS (1:10, 1:0)");
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let (sets, gets) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if sets == 0 {
            return Err(format!(
                "`{s}` has no SET: every GET reads what this run's SETs wrote, so there must be one"
            ));
        }
        if u32::checked_add(sets, gets).is_none() {
            return Err(bad());
        }
        Ok(Ratio { sets, gets })
    }
}

/// The flags every binary takes for installing it: each prints something made from the
/// binary's flags and exits, so it must be given alone. Shown by --help, not by -h.
#[derive(Debug, Clone, Args)]
pub struct Install {
    /// Print the completion script for SHELL on stdout.
    ///
    /// For bash save it as ~/.local/share/bash-completion/completions/BINARY, for zsh as
    /// _BINARY in a directory of $fpath, for fish as ~/.config/fish/completions/BINARY.fish.
    #[arg(
        long,
        value_enum,
        value_name = "SHELL",
        exclusive = true,
        hide_short_help = true,
        help_heading = "Installation"
    )]
    pub completions: Option<Shell>,

    /// Print the man page (roff) on stdout.
    ///
    /// Read it with `BINARY --man | man -l -`, or save it as man1/BINARY.1 in a directory
    /// that `manpath` lists.
    #[arg(
        long,
        exclusive = true,
        hide_short_help = true,
        help_heading = "Installation"
    )]
    pub man: bool,
}

impl Install {
    /// Prints what was asked for of `T`'s flags on stdout: whether anything was asked.
    pub fn print<T: CommandFactory>(&self) -> io::Result<bool> {
        if let Some(shell) = self.completions {
            let mut cmd = without_hidden(&T::command());
            let name = cmd.get_name().to_string();
            // Into memory first: the generators panic on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, name, &mut script);
            write_out(&script)?;
        } else if self.man {
            print_man(T::command())?;
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

/// `cmd` with only the flags and subcommands --help shows: the completion generators offer
/// hidden ones too (clap-rs/clap#1335), and epoll-server's worker flags are for its master.
fn without_hidden(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().filter(|a| !a.is_hide_set()).cloned())
        .subcommands(
            cmd.get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(without_hidden),
        );
    if let Some(v) = cmd.get_version() {
        out = out.version(v.to_string());
    }
    // zsh and fish show it beside a subcommand.
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out
}

/// Prints `cmd`'s man page (roff) on stdout.
pub fn print_man(cmd: clap::Command) -> io::Result<()> {
    let mut page = Vec::new();
    // `help` is no page of its own: --help is.
    clap_mangen::Man::new(cmd.disable_help_subcommand(true)).render(&mut page)?;
    write_out(&page)
}

fn write_out(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// The flags both servers take.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Read settings from this TOML file first: every flag is a key of the same name
    /// (`max-conns = 100000`, `ports = "6000-6049"`, `stats = true`); flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check the settings (the --config file and the flags), print them as TOML and exit 0,
    /// or name what is wrong and exit 2. Starts nothing.
    #[arg(long)]
    pub check_config: bool,

    /// Shard threads are pinned to this many cores (default: every core this process may use).
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,

    /// Ports to listen on: one port, a range A-B, or a comma list of both.
    #[arg(long, default_value = "6000", value_name = "PORTS")]
    pub ports: PortList,

    /// Address to listen on: IPv4, or IPv6 (`::` takes IPv4 too, as IPv4-mapped addresses).
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub host: std::net::IpAddr,

    /// The protocol served.
    #[arg(long, value_enum, default_value_t = Proto::Echo)]
    pub proto: Proto,

    /// HTTP: the most bytes a request line and its headers may take (431 and close above).
    #[arg(long, default_value_t = 8192, value_name = "BYTES")]
    pub max_header_bytes: u32,

    /// HTTP: the largest request body read and discarded (413 and close above).
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    pub max_body_bytes: u64,

    /// Redis: the largest bulk string (argument) of a request (Redis's proto-max-bulk-len;
    /// `-ERR Protocol error: invalid bulk length` and close above).
    #[arg(long, default_value_t = 512 * 1024 * 1024, value_name = "BYTES")]
    pub max_bulk_bytes: u64,

    /// Redis: over this much memory used by keys and values, commands that may grow it are
    /// refused with Redis's `-OOM` error (noeviction). Default: no limit.
    #[arg(long, value_name = "BYTES")]
    pub maxmemory: Option<u64>,

    /// Redis: append every write command to FILE (RESP, as Redis's append-only file) and
    /// replay it at start; a torn last record is cut off, and said so.
    #[arg(long, value_name = "FILE")]
    pub appendonly: Option<PathBuf>,

    /// Redis: when the append-only file is fsynced.
    #[arg(long, value_enum, default_value_t = Fsync::Everysec)]
    pub appendfsync: Fsync,

    /// The most connections held at once: the server plans its shards for it, and closes
    /// connections beyond it as soon as they are accepted (default: no cap beyond what one
    /// shard per core holds within the fd limit, where accepting pauses).
    #[arg(long, value_name = "N")]
    pub max_conns: Option<u64>,

    /// Close a connection after this many seconds without a byte moving either way (0: never).
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    pub idle_timeout: f64,

    /// HTTP: a request head (request line and headers) must arrive whole within this many
    /// seconds of its first byte, or the server answers 408 and closes (0: never).
    #[arg(long, default_value = "30", value_name = "SECONDS")]
    pub header_timeout: f64,

    /// HTTP: a request body stalled this many seconds without a byte (between two reads,
    /// not over the whole body: nginx's client_body_timeout) is answered 408 and closed
    /// (0: never).
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub body_timeout: f64,

    /// Close a connection whose peer takes no byte of the output owed to it for this many
    /// seconds (between two writes, not over the whole answer: nginx's send_timeout; 0: never).
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub send_timeout: f64,

    /// Batch wake-ups: a shard's wait for events may take up to this many microseconds to
    /// gather more once one is there (io_uring: until 64 completions, or one per connection
    /// held if it holds fewer, the kernel's minimum wait, 6.12+; epoll: one sleep, then the
    /// events gathered meanwhile). Fewer wake-ups and less CPU per request, for about this
    /// much more latency plus the batch's own work; none once 64 are waiting. 0: off. Default: each engine's measured best
    /// (uring-server 200, epoll-server 0; scripts/batch-sweep.sh).
    #[arg(long, value_name = "USEC")]
    pub batch_usec: Option<u32>,

    /// Print a stats line every second.
    #[arg(long)]
    pub stats: bool,

    /// Write the exit summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,

    /// Serve GET /metrics (Prometheus text format: every counter per shard, connections held)
    /// on this address, e.g. 127.0.0.1:9100.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Once the listeners (and the PID file) are set up as root, run as this user, and its
    /// group or GROUP (NAME or NAME:GROUP).
    #[arg(long, value_name = "NAME[:GROUP]")]
    pub user: Option<String>,

    /// Write the server's PID to this file once it listens; removed at exit. A file naming a
    /// live process is an error at start.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// On SIGINT/SIGTERM, how long owed output may take before connections are cut.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub shutdown_timeout: f64,

    /// Append access log lines to FILE: HTTP one per request (nginx's combined format plus
    /// $request_time), echo one per connection at its close (nginx stream's basic format).
    /// SIGUSR1 reopens it (rotation). `off`: none.
    #[arg(long, default_value = "off", value_name = "FILE")]
    pub access_log: PathBuf,

    /// The most bytes of access log lines a shard holds for the file: beyond it the
    /// Proactor stops reading until a write completes, the Reactor writes at once. Lines
    /// are about 100 bytes: 1 MiB rides out a 0.2 s disk stall at 50,000 requests/s a shard.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub access_log_buffer: usize,

    /// fdatasync the access log after a write, at most every this many seconds (through the
    /// ring in the Proactor; 0: never, the page cache decides).
    #[arg(long, default_value = "0", value_name = "SECONDS")]
    pub access_log_fsync: f64,

    #[command(flatten)]
    pub install: Install,
}

/// The Proactor: an io_uring TCP server (echo or HTTP/1.1) for up to a million connections.
///
/// A completion-based server: per-core shards, each owning its ring, with multishot accept
/// into direct descriptors, multishot recv into a provided-buffer ring, and sends straight
/// from the received buffer. It holds more connections than RLIMIT_NOFILE (a connection
/// costs no fd), planning several rings per core where that limit needs it. Linux 6.1+.
///
/// Try: `uring-server --ports 6000 --stats`, and from another shell `uring-load --ports 6000`.
#[derive(Parser, Debug, Clone)]
#[command(name = "uring-server", version)]
pub struct UringArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Provided buffers per shard (a power of two, at most 32768).
    #[arg(long, default_value_t = 2048, value_name = "N")]
    pub bufs: u16,

    /// Size of each provided buffer in bytes.
    #[arg(long, default_value_t = 4096, value_name = "BYTES")]
    pub buf_size: u32,

    /// Rings one thread drives where a core needs several (each ring's fixed-file table is
    /// capped at RLIMIT_NOFILE): 0 puts all of a core's rings on one thread, 1 gives each
    /// ring a thread of its own.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub rings_per_thread: usize,
}

/// The Reactor: an edge-triggered epoll TCP server (echo or HTTP/1.1), uring-server's baseline.
///
/// Built the way the best epoll servers are: edge-triggered, non-blocking, one loop per
/// shard, no locks, writes straight from the shard's read buffer. Above what one process's
/// fd limit holds, its shards are worker processes under a master (nginx style); with
/// `--proto redis` one more process, the keyspace owner, holds the keyspace (and the
/// append-only file and access log) for them all, and is never restarted: if it dies the
/// keyspace is lost and the server ends. The same flags, output lines and protocol code as
/// uring-server, so the two compare on equal terms.
///
/// Try: `epoll-server --ports 6000 --stats`, and from another shell `uring-load --ports 6000`.
#[derive(Parser, Debug, Clone)]
#[command(name = "epoll-server", version)]
pub struct EpollArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Internal: run as worker INDEX of a master process.
    #[arg(long, hide = true, requires_all = ["worker_cpu", "worker_cap"])]
    pub worker_index: Option<usize>,
    /// Internal: the worker's CPU.
    #[arg(long, hide = true)]
    pub worker_cpu: Option<usize>,
    /// Internal: the most connections the worker's shard holds.
    #[arg(long, hide = true)]
    pub worker_cap: Option<u64>,
    /// Internal: the fd of the master's shared connection count (with `--max-conns`).
    #[arg(long, hide = true)]
    pub worker_gate_fd: Option<i32>,
    /// Internal: the slot of that count holding this worker's own share.
    #[arg(long, hide = true, requires = "worker_gate_fd")]
    pub worker_share_slot: Option<usize>,
    /// Internal: Redis, the worker proxies its connections to the keyspace owner listening
    /// on this abstract unix socket.
    #[arg(long, hide = true, value_name = "NAME", requires = "worker_index")]
    pub worker_owner: Option<String>,
    /// Internal: run as the keyspace owner of a master's Redis workers, listening on this
    /// abstract unix socket.
    #[arg(long, hide = true, value_name = "NAME", requires = "worker_cpu")]
    pub keyspace_owner: Option<String>,
}

/// The server models of the notes this project comes from, each serving echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Model {
    /// Blocking accept, serve one client to its end, then the next: concurrency 1.
    Iterative,
    /// A process per connection (fork), children reaped on SIGCHLD.
    Fork,
    /// A thread per connection, with a bounded stack (--stack-kib).
    Thread,
    /// One thread, select(2): an fd at or above FD_SETSIZE (1024) is refused.
    Select,
    /// One thread, poll(2).
    Poll,
    /// Level-triggered epoll with a callback per event (the notes' reactor.c, libevent).
    EpollLt,
    /// The project's Reactor: runs `epoll-server` (edge-triggered epoll).
    EpollEt,
    /// Signal-driven I/O: F_SETSIG with a real-time signal, taken by sigwaitinfo; a queue
    /// overflow (SIGIO) falls back to polling every connection.
    Sigio,
    /// One epoll I/O thread feeding a pool of worker threads through a request queue.
    HalfSyncHalfReactor,
    /// A pool of threads: the leader waits on epoll and hands the role on before it serves.
    LeaderFollowers,
    /// The simulated Proactor: an epoll thread does the reads and writes, workers get the
    /// completed data.
    SimProactor,
    /// POSIX AIO: aio_read/aio_write with completion notification (glibc runs them on
    /// threads of its own).
    PosixAio,
    /// The project's Proactor: runs `uring-server` (io_uring).
    Uring,
}

impl Model {
    pub const ALL: [Model; 13] = [
        Model::Iterative,
        Model::Fork,
        Model::Thread,
        Model::Select,
        Model::Poll,
        Model::EpollLt,
        Model::EpollEt,
        Model::Sigio,
        Model::HalfSyncHalfReactor,
        Model::LeaderFollowers,
        Model::SimProactor,
        Model::PosixAio,
        Model::Uring,
    ];

    /// The name `--model` takes.
    pub fn name(self) -> &'static str {
        match self {
            Model::Iterative => "iterative",
            Model::Fork => "fork",
            Model::Thread => "thread",
            Model::Select => "select",
            Model::Poll => "poll",
            Model::EpollLt => "epoll-lt",
            Model::EpollEt => "epoll-et",
            Model::Sigio => "sigio",
            Model::HalfSyncHalfReactor => "half-sync-half-reactor",
            Model::LeaderFollowers => "leader-followers",
            Model::SimProactor => "sim-proactor",
            Model::PosixAio => "posix-aio",
            Model::Uring => "uring",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every server model of the notes, one at a time, serving echo: from the one-client server
/// to the Proactor, measured with the same client, flags and output as the two servers.
///
/// Each model is a small module of src/models/, written the way the notes describe it and
/// done correctly (short writes, EINTR, EAGAIN, half-close, reset). `epoll-et` and `uring`
/// run the project's own servers, epoll-server and uring-server, with these flags. The plan
/// line says what the model can hold here and which wall stops it; asking for more is an error.
///
/// Try: `model-server --model poll --ports 6000 --stats`, and `uring-load --ports 6000`.
#[derive(Parser, Debug, Clone)]
#[command(name = "model-server", version)]
pub struct ModelArgs {
    /// The server model.
    #[arg(long, value_enum, required_unless_present_any = ["completions", "man"])]
    pub model: Option<Model>,

    /// The process may run on this many cores (default: every core it may use).
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,

    /// Ports to listen on: one port, a range A-B, or a comma list of both.
    #[arg(long, default_value = "6000", value_name = "PORTS")]
    pub ports: PortList,

    /// Address to listen on: IPv4, or IPv6 (`::` takes IPv4 too, as IPv4-mapped addresses).
    #[arg(long, default_value = "0.0.0.0", value_name = "ADDR")]
    pub host: std::net::IpAddr,

    /// The most connections held at once: the model is planned for it (an error if it
    /// cannot hold them here), and closes connections beyond it as soon as they are accepted.
    /// Default: what the model holds here.
    #[arg(long, value_name = "N")]
    pub max_conns: Option<u64>,

    /// Worker threads of the pool models (half-sync-half-reactor, leader-followers,
    /// sim-proactor).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub threads: usize,

    /// Stack size of each thread the models start (thread: one per connection), in KiB.
    #[arg(long, default_value_t = 64, value_name = "KIB")]
    pub stack_kib: usize,

    /// Print a stats line every second.
    #[arg(long)]
    pub stats: bool,

    /// Write the exit summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,

    /// On SIGINT/SIGTERM, how long owed output may take before connections are cut.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub shutdown_timeout: f64,

    #[command(flatten)]
    pub install: Install,
}

/// An io_uring load generator: holds many connections, checks every answer, reports latency.
///
/// Every connection is a direct descriptor (no fd each, so one process holds far more than
/// RLIMIT_NOFILE). Echo requests with every byte verified, HTTP GETs with every answer's
/// status and body checked, or Redis SETs and GETs (memtier_benchmark's workload) with every
/// reply checked; closed loop, or open loop with latency corrected for coordinated omission;
/// and a count of every connection and every error. Exits 3 when fewer connections
/// were established than asked, or on any error (a byte that did not verify, a request left
/// unanswered), unless --allow-partial.
///
/// Try: `uring-load --ports 6000 --conns 1000 --duration 5`, against `uring-server --ports 6000`.
#[derive(Parser, Debug, Clone)]
#[command(name = "uring-load", version, args_conflicts_with_subcommands = true)]
pub struct LoadCli {
    #[command(subcommand)]
    pub command: Option<LoadCommand>,

    #[command(flatten)]
    pub run: LoadArgs,

    #[command(flatten)]
    pub install: Install,
}

#[derive(Subcommand, Debug, Clone)]
pub enum LoadCommand {
    /// Merge the --hlog files of several runs (several hosts, say) into one latency report.
    Merge {
        /// Interval logs written by --hlog.
        #[arg(required = true, value_name = "FILE.hlog")]
        logs: Vec<PathBuf>,
        /// Write the merged report as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Print this subcommand's man page (roff) on stdout.
        ///
        /// Save it as man1/uring-load-merge.1, beside uring-load.1 (`uring-load --man`).
        #[arg(
            long,
            exclusive = true,
            hide_short_help = true,
            help_heading = "Installation"
        )]
        man: bool,
    },
}

impl LoadCli {
    /// The `merge` subcommand's own command, named as its man page is (`uring-load-merge`).
    pub fn merge_command() -> clap::Command {
        let mut cmd = Self::command();
        // Building names the subcommands after their parent.
        cmd.build();
        cmd.find_subcommand("merge")
            .expect("LoadCommand has a merge")
            .clone()
    }
}

/// The flags of a load run.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Server address, IPv4 or IPv6 (`::1`).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: IpAddr,

    /// Server ports, connections spread over them: one port, a range A-B, or a comma list.
    #[arg(long, default_value = "6000", value_name = "PORTS")]
    pub ports: PortList,

    /// Source addresses to connect from, of --host's family: a range A-B (`127.0.0.1-127.0.0.8`,
    /// `fd00::1-fd00::8`) or a comma list (each adds ip_local_port_range's worth of
    /// connections per server port).
    #[arg(long, value_name = "ADDRS")]
    pub sources: Option<AddrList>,

    /// Connections to open and hold, all at once.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub conns: u64,

    /// The protocol: echo requests; HTTP/1.1 GETs whose answers must be 200 with the body
    /// `Hello, World!`; or Redis SETs and GETs (RESP2) on keys of each connection's own, every
    /// GET's reply the value its connection last SET.
    #[arg(long, value_enum, default_value_t = Proto::Echo)]
    pub proto: Proto,

    /// Echo: bytes per request [default: 64].
    #[arg(long, value_name = "BYTES")]
    pub size: Option<usize>,

    /// HTTP: the path to GET [default: /plaintext].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,

    /// HTTP and Redis, closed loop: requests written together on a connection; the next
    /// batch goes once all are answered [default: 1].
    #[arg(long, value_name = "N")]
    pub pipeline: Option<u32>,

    /// Redis: SETs to GETs, each connection's commands cycling through that many SETs, then
    /// that many GETs (memtier_benchmark's) [default: 1:10].
    #[arg(long, value_name = "SETS:GETS")]
    pub ratio: Option<Ratio>,

    /// Redis: keys are `--key-prefix` and an ID from 0 to this, each connection's its own:
    /// connection c of n has the IDs c, c + n, c + 2n, ... (memtier_benchmark's)
    /// [default: 10000000].
    #[arg(long, value_name = "ID")]
    pub key_maximum: Option<u64>,

    /// Redis: what every key begins with [default: memtier-].
    #[arg(long, value_name = "PREFIX")]
    pub key_prefix: Option<String>,

    /// Redis: bytes of every SET's value [default: 32].
    #[arg(long, value_name = "BYTES")]
    pub data_size: Option<usize>,

    /// Redis: every SET expires its key after this many seconds (`SET k v EX SECONDS`), and a
    /// GET may find it gone (a miss) [default: none, keys never expire].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub key_ttl: Option<u32>,

    /// Closed loop: requests (with --pipeline: batches) outstanding on each connection.
    #[arg(long, default_value_t = 1, value_name = "D")]
    pub depth: u32,

    /// Open loop: total requests per second, spread evenly over the connections.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,

    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub warmup: f64,

    /// Seconds measured once every connection is up (with --requests: the time limit).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,

    /// Closed loop, counted: this many requests on each connection, then stop.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Client threads are pinned to this many cores (default: all).
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,

    /// Connects in flight per client thread.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub connect_inflight: usize,

    /// Connects per second (default: as fast as the in-flight bound lets them go).
    #[arg(long, value_name = "R")]
    pub connect_rate: Option<f64>,

    /// Seed of the payload pattern (Redis: of the values, and of the keys GETs read).
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,

    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write an HdrHistogram interval log (one histogram per second) to this file.
    #[arg(long, value_name = "FILE")]
    pub hlog: Option<PathBuf>,

    /// Batch completions: each thread waits for up to 64, or this many microseconds once one
    /// is there (fewer wake-ups with many connections per thread; latency still counts from
    /// when each request was due). 0: off. Kernel 6.12+.
    #[arg(long, default_value_t = 0, value_name = "USEC")]
    pub batch_usec: u32,

    /// Exit 0 even when connections failed or requests went wrong.
    #[arg(long)]
    pub allow_partial: bool,

    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// `--batch-usec` when it is not given, per engine (see the flag).
pub const fn default_batch_usec(engine: EngineKind) -> u32 {
    match engine {
        EngineKind::Uring => 200,
        EngineKind::Epoll => 0,
    }
}

impl ServerArgs {
    /// `--batch-usec` for `engine`: as given, else that engine's default.
    pub fn batch_usec(&self, engine: EngineKind) -> u32 {
        self.batch_usec
            .unwrap_or_else(|| default_batch_usec(engine))
    }

    /// The connection timeouts the shards enforce (a header timeout only for HTTP).
    pub fn timeouts(&self) -> Timeouts {
        let on = |s: f64| (s > 0.0).then(|| Duration::from_secs_f64(s));
        let http = self.proto == Proto::Http;
        Timeouts {
            idle: on(self.idle_timeout),
            header: on(self.header_timeout).filter(|_| http),
            body: on(self.body_timeout).filter(|_| http),
            send: on(self.send_timeout),
            // Redis closes after QUIT and protocol errors, so it lingers too.
            linger: (self.proto != Proto::Echo).then_some(LINGER),
        }
    }

    /// `--access-log`'s file, unless `off`.
    pub fn access_log(&self) -> Option<&std::path::Path> {
        (self.access_log.as_os_str() != "off").then_some(self.access_log.as_path())
    }

    /// The Redis protocol's limits, if it is the protocol served.
    pub fn redis(&self) -> Option<crate::proto::redis::Limits> {
        (self.proto == Proto::Redis).then(|| crate::proto::redis::Limits {
            max_bulk_bytes: self.max_bulk_bytes,
            ..Default::default()
        })
    }

    /// The HTTP limits, if HTTP is the protocol served.
    pub fn http(&self) -> Option<Limits> {
        (self.proto == Proto::Http).then_some(Limits {
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(s: &str) -> Result<Vec<u16>, String> {
        s.parse::<PortList>().map(|p| p.0)
    }

    #[test]
    fn port_lists_parse() {
        assert_eq!(ports("6000").unwrap(), vec![6000]);
        assert_eq!(ports("6000-6003").unwrap(), vec![6000, 6001, 6002, 6003]);
        assert_eq!(
            ports("80,6000-6001, 7000").unwrap(),
            vec![80, 6000, 6001, 7000]
        );
        assert_eq!(ports("6000-6049").unwrap().len(), 50);
    }

    #[test]
    fn bad_port_lists_say_why() {
        assert!(ports("0").unwrap_err().contains("port 0"));
        assert!(
            ports("70000")
                .unwrap_err()
                .contains("`70000` is not a port")
        );
        assert!(ports("6010-6000").unwrap_err().contains("backwards"));
        assert!(ports("6000,6000").unwrap_err().contains("named twice"));
        assert!(ports("x").unwrap_err().contains("not a port"));
        assert!(ports("1-65535").unwrap_err().contains("more than"));
        assert!(ports("").is_err());
    }

    #[test]
    fn address_lists_parse() {
        let a: AddrList = "127.0.0.1-127.0.0.3,10.0.0.9".parse().unwrap();
        assert_eq!(a.0.len(), 4);
        assert_eq!(a.0[2], Ipv4Addr::new(127, 0, 0, 3));
        assert!(
            "127.0.0.9-127.0.0.1"
                .parse::<AddrList>()
                .unwrap_err()
                .contains("backwards")
        );
        assert!(
            "localhost"
                .parse::<AddrList>()
                .unwrap_err()
                .contains("not an IPv4 or IPv6 address")
        );
    }

    #[test]
    fn ipv6_address_lists_parse() {
        let a: AddrList = "fd00::fe-fd00::100, ::1".parse().unwrap();
        assert_eq!(a.0.len(), 4);
        assert_eq!(a.0[1], "fd00::ff".parse::<IpAddr>().unwrap());
        assert_eq!(a.0[2], "fd00::100".parse::<IpAddr>().unwrap());
        assert_eq!(a.0[3], IpAddr::from(Ipv6Addr::LOCALHOST));
        let err = |s: &str| s.parse::<AddrList>().unwrap_err();
        assert!(err("fd00::9-fd00::1").contains("backwards"));
        assert!(err("fd00::1-fd00::1:1").contains("more than 65536"));
        assert!(err("fd00::1-127.0.0.1").contains("mixes IPv4 and IPv6"));
        assert!(err("127.0.0.1,::1").contains("mixes IPv4 and IPv6"));
        assert!(err("fe80::1%eth0").contains("not an IPv4 or IPv6"));
    }

    #[test]
    fn every_binarys_flags_are_well_formed() {
        use clap::CommandFactory;
        UringArgs::command().debug_assert();
        EpollArgs::command().debug_assert();
        LoadCli::command().debug_assert();
        ModelArgs::command().debug_assert();
    }

    #[test]
    fn completions_offer_no_hidden_flag() {
        use clap::CommandFactory;
        for cmd in [
            UringArgs::command(),
            EpollArgs::command(),
            LoadCli::command(),
            ModelArgs::command(),
        ] {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let mut script = Vec::new();
                let mut c = without_hidden(&cmd);
                clap_complete::generate(shell, &mut c, cmd.get_name().to_string(), &mut script);
                let script = String::from_utf8(script).unwrap();
                assert!(script.contains("ports"), "{shell}: {script}");
                assert!(!script.contains("worker-"), "{shell}: {script}");
            }
        }
    }

    #[test]
    fn port_lists_display_compactly() {
        assert_eq!(
            "6000-6049".parse::<PortList>().unwrap().to_string(),
            "6000-6049"
        );
        assert_eq!("6000".parse::<PortList>().unwrap().to_string(), "6000");
        assert_eq!("1,3".parse::<PortList>().unwrap().to_string(), "1,3");
    }
}
