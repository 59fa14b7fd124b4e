//! The load generator's engine: plans client shards from the connection count and the fd
//! limit, connects every connection, runs the workload (echo with every byte verified, HTTP
//! GETs with every answer checked, or Redis SETs and GETs with every reply checked), and
//! reports what happened to each connection.

pub mod conn;
pub mod hlog;
pub mod shard;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::cli::{self, LoadArgs, LoadCli, LoadCommand, PortList, Proto, Ratio};
use crate::error::{Error, Result};
use crate::plan;
use crate::proto::redis::check::Commands;
use crate::sys::{self, limits::HostLimits};
use conn::{PATTERN_SPREAD, Requests};
use shard::{LoadShard, ShardPlan, Shared, Workload};

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub host: IpAddr,
    pub ports: PortList,
    /// Source addresses to bind, of `host`'s family (empty: let the kernel choose).
    pub sources: Vec<IpAddr>,
    pub conns: u64,
    pub proto: Proto,
    /// Echo: bytes per request.
    pub size: usize,
    /// HTTP: the path every GET asks for.
    pub path: String,
    /// HTTP and Redis, closed loop: requests written together, the next batch once all are
    /// answered.
    pub pipeline: u32,
    /// Redis: SETs to GETs.
    pub ratio: Ratio,
    /// Redis: the highest key ID.
    pub key_maximum: u64,
    pub key_prefix: String,
    /// Redis: bytes of every SET's value.
    pub data_size: usize,
    /// Redis: every SET's TTL in seconds.
    pub key_ttl: Option<u32>,
    /// Closed loop: requests (batches, with `pipeline`) outstanding per connection.
    pub depth: u32,
    /// Open loop: total requests per second (overrides `depth`).
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per connection: the run ends when every connection has done them.
    pub requests: Option<u64>,
    pub cores: Option<usize>,
    /// Connects in flight per shard.
    pub connect_inflight: usize,
    /// Connects per second for the whole process, if paced.
    pub connect_rate: Option<f64>,
    pub seed: u64,
    /// Where to write the HdrHistogram interval log.
    pub hlog: Option<PathBuf>,
    /// Batched waits (see `RingConfig::batch_usec`); 0: off.
    pub batch_usec: u32,
    /// Print progress on stderr.
    pub progress: bool,
}

/// Largest payload: the pattern every request is cut from is held once per shard.
pub const MAX_SIZE: usize = 64 << 20;
/// Closed loop: the most requests outstanding on one connection.
const MAX_OUTSTANDING: u64 = 4096;

impl LoadConfig {
    /// The run `args` ask for, with each optional flag's default for the protocol; a flag
    /// given for another protocol, or a negative time, is a flag error.
    pub fn new(args: &LoadArgs) -> Result<LoadConfig> {
        let redis = [
            args.ratio.is_some(),
            args.key_maximum.is_some(),
            args.key_prefix.is_some(),
            args.data_size.is_some(),
            args.key_ttl.is_some(),
        ]
        .contains(&true);
        let misplaced = match args.proto {
            Proto::Echo if args.path.is_some() || args.pipeline.is_some() => {
                Some("--path and --pipeline are for --proto http (--pipeline for redis too)")
            }
            Proto::Http if args.size.is_some() => {
                Some("--size is for echo; HTTP requests are GETs of --path")
            }
            Proto::Redis if args.size.is_some() || args.path.is_some() => {
                Some("--size and --path are not for redis: its values are --data-size bytes")
            }
            Proto::Echo | Proto::Http if redis => Some(
                "--ratio, --key-maximum, --key-prefix, --data-size and --key-ttl are for --proto redis",
            ),
            _ => None,
        };
        if let Some(why) = misplaced {
            return Err(Error::BadFlag(why.into()));
        }
        let sources = args.sources.clone().map(|s| s.0).unwrap_or_default();
        if let Some(other) = sources.iter().find(|s| s.is_ipv4() != args.host.is_ipv4()) {
            return Err(Error::BadFlag(format!(
                "--sources {other} is {}, --host {} is {}: a connection's two ends are of one family",
                family(*other),
                args.host,
                family(args.host)
            )));
        }
        Ok(LoadConfig {
            host: args.host,
            ports: args.ports.clone(),
            sources,
            conns: args.conns,
            proto: args.proto,
            size: args.size.unwrap_or(64),
            path: args.path.clone().unwrap_or_else(|| "/plaintext".into()),
            pipeline: args.pipeline.unwrap_or(1),
            // memtier_benchmark's defaults.
            ratio: args.ratio.unwrap_or(Ratio { sets: 1, gets: 10 }),
            key_maximum: args.key_maximum.unwrap_or(10_000_000),
            key_prefix: args.key_prefix.clone().unwrap_or_else(|| "memtier-".into()),
            data_size: args.data_size.unwrap_or(32),
            key_ttl: args.key_ttl,
            depth: args.depth,
            rate: args.rate,
            warmup: seconds(args.warmup, "--warmup")?,
            duration: seconds(args.duration, "--duration")?,
            requests: args.requests,
            cores: args.cores,
            connect_inflight: args.connect_inflight,
            connect_rate: args.connect_rate,
            seed: args.seed,
            hlog: args.hlog.clone(),
            batch_usec: args.batch_usec,
            progress: !args.quiet,
        })
    }
}

/// "IPv4" or "IPv6", for messages.
fn family(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

fn seconds(v: f64, flag: &str) -> Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::BadFlag(format!(
            "{flag} must be a number of seconds >= 0"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Exit status of a run with fewer connections than asked, or any error, without
/// `--allow-partial`.
const EXIT_PARTIAL: i32 = 3;

/// What `uring-load` does with its command line: merges interval logs, or runs the load and
/// prints (and with `--json` writes) its report. Returns the status to exit with.
pub fn run_cli(cli: &LoadCli) -> Result<i32> {
    if cli
        .install
        .print::<LoadCli>()
        .map_err(|e| Error::io("writing to stdout", e))?
    {
        return Ok(0);
    }
    if let Some(LoadCommand::Merge { logs, json, man }) = &cli.command {
        if *man {
            cli::print_man(LoadCli::merge_command())
                .map_err(|e| Error::io("writing to stdout", e))?;
            return Ok(0);
        }
        let r = merge_report(logs)?;
        println!("{}", r.human());
        if let Some(path) = json {
            write_json(path, &r)?;
        }
        return Ok(0);
    }
    let args = &cli.run;
    let report = run(&LoadConfig::new(args)?)?;
    println!("{}", report.human());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    let short = report.conns_established < report.conns_requested;
    if (short || report.error_count() > 0) && !args.allow_partial {
        eprintln!(
            "uring-load: FAILED: {} of {} connections established, {} errors (--allow-partial to accept)",
            report.conns_established,
            report.conns_requested,
            report.error_count()
        );
        return Ok(EXIT_PARTIAL);
    }
    Ok(0)
}

fn write_json(path: &PathBuf, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).expect("reports always serialize");
    std::fs::write(path, json + "\n")
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientCpu {
    pub user_s: f64,
    pub sys_s: f64,
}

/// Everything a run measured; `--json` writes it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "closed" or "open".
    pub mode: &'static str,
    /// "echo", "http" or "redis".
    pub proto: &'static str,
    /// HTTP and Redis: requests written together on each connection (1: no pipelining).
    pub pipeline: u32,
    /// Open loop: the requests per second asked for.
    pub rate_rps: Option<f64>,
    pub conns_requested: u64,
    pub conns_established: u64,
    pub conns_failed: u64,
    pub conns_closed_by_peer: u64,
    /// Seconds from start until every connection of every thread had connected or failed.
    pub ramp_s: f64,
    pub requests: u64,
    /// Errors by kind ("verify_mismatch", "connect:connection_refused", ...).
    pub errors: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub throughput_rps: f64,
    /// Bytes per request (HTTP: of each GET; Redis: of each SET's value).
    pub size: usize,
    /// Redis: the measured requests by command and reply (null for the other protocols).
    pub redis: Option<RedisCounts>,
    /// From when each request was due (open loop: its schedule time, so coordinated
    /// omission is corrected; closed loop: when it was issued).
    pub latency_us: Percentiles,
    /// Open loop: from when each request's first byte was sent (null in closed loop).
    pub latency_uncorrected_us: Option<Percentiles>,
    pub connect_us: Percentiles,
    pub client_cpu: ClientCpu,
}

/// Redis requests answered, by command and reply.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RedisCounts {
    pub sets: u64,
    pub gets: u64,
    /// GETs that found the value.
    pub hits: u64,
    /// GETs that found the key expired (with --key-ttl).
    pub misses: u64,
}

impl Report {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn human(&self) -> String {
        let l = &self.latency_us;
        let c = &self.connect_us;
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let spectrum = |p: &Percentiles| {
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
                p.p50, p.p90, p.p99, p.p999, p.p9999, p.max
            )
        };
        let uncorrected = match &self.latency_uncorrected_us {
            Some(p) => format!("\nuncorrected: {} (from the actual send)", spectrum(p)),
            None => String::new(),
        };
        let mode = match self.rate_rps {
            Some(r) => format!("open loop at {r:.0} req/s"),
            None => "closed loop".to_string(),
        };
        let what = match self.proto {
            "http" => format!(
                "{} B GETs, pipeline {}, every answer checked",
                self.size, self.pipeline
            ),
            "redis" => format!(
                "SET {} B values and GET, pipeline {}, every reply checked",
                self.size, self.pipeline
            ),
            _ => format!("{} B each, every byte verified", self.size),
        };
        let commands = match &self.redis {
            Some(r) => format!(
                "\ncommands:    sets {} gets {} (hits {} misses {})",
                r.sets, r.gets, r.hits, r.misses
            ),
            None => String::new(),
        };
        format!(
            "connections: requested {} established {} failed {} closed-by-peer {} (all up in {:.1}s)\n\
             requests:    {} in {:.2}s = {:.0} req/s ({mode}, {what}){commands}\n\
             errors:      {errors}\n\
             latency us:  {}{uncorrected}\n\
             connect us:  p50 {} p90 {} p99 {} p99.9 {} max {}\n\
             client cpu:  user {:.2}s sys {:.2}s",
            self.conns_requested,
            self.conns_established,
            self.conns_failed,
            self.conns_closed_by_peer,
            self.ramp_s,
            self.requests,
            self.duration_s,
            self.throughput_rps,
            spectrum(l),
            c.p50,
            c.p90,
            c.p99,
            c.p999,
            c.max,
            self.client_cpu.user_s,
            self.client_cpu.sys_s,
        )
    }
}

fn merge_into(intervals: &mut BTreeMap<u64, Histogram<u64>>, second: u64, h: &Histogram<u64>) {
    intervals
        .entry(second)
        .or_insert_with(shard::histogram)
        .add(h)
        .expect("same bounds");
}

/// Progress on stderr, once a second: on a terminal a live bar of the connections up (or
/// failed) with the run's figures beside it; otherwise the figures as a line, which logs and
/// tests read.
enum Progress {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    fn new(conns: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let style = ProgressStyle::with_template("[{bar:30}] {msg}")
            .expect("the template is valid")
            .progress_chars("#.");
        let bar = ProgressBar::with_draw_target(Some(conns), ProgressDrawTarget::stderr());
        Progress::Bar(bar.with_style(style))
    }

    fn report(&self, cfg: &LoadConfig, shared: &Shared, started: Instant, rps: f64) {
        let established = shared.established.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        let line = format!(
            "t={:.0}s connected {established}/{} failed {failed} requests {} ({rps:.0}/s)",
            started.elapsed().as_secs_f64(),
            cfg.conns,
            shared.requests.load(Relaxed)
        );
        match self {
            Progress::Bar(bar) => {
                bar.set_position(established + failed);
                bar.set_message(line);
            }
            Progress::Lines => eprintln!("uring-load: {line}"),
        }
    }

    /// Leaves the bar's last state on the terminal, the report below it.
    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// Reads several `--hlog` files (from several hosts, say) and reports them as one run.
pub fn merge_report(paths: &[PathBuf]) -> Result<MergeReport> {
    if paths.is_empty() {
        return Err(Error::BadFlag("merge needs at least one .hlog file".into()));
    }
    let m = hlog::merge(paths).map_err(|e| Error::io("merging interval logs", e))?;
    Ok(MergeReport {
        logs: paths.len(),
        intervals: m.intervals,
        requests: m.total.len(),
        seconds: m.seconds,
        latency_us: Percentiles::of(&m.total),
    })
}

/// What `uring-load merge` prints (and writes with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub logs: usize,
    pub intervals: usize,
    pub requests: u64,
    /// The longest log's span.
    pub seconds: f64,
    pub latency_us: Percentiles,
}

impl MergeReport {
    pub fn human(&self) -> String {
        let l = &self.latency_us;
        format!(
            "merged {} logs ({} intervals over {:.0}s): {} requests\n\
             latency us:  p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {}",
            self.logs,
            self.intervals,
            self.seconds,
            self.requests,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.p9999,
            l.max
        )
    }
}

/// The bytes every request is cut from: pseudo-random, so no two offsets look alike.
fn pattern(len: usize, seed: u64) -> Box<[u8]> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The GET every HTTP request is: an IPv6 literal in Host is bracketed (RFC 7230 5.4, the
/// URI's host, RFC 3986 3.2.2).
fn http_get(path: &str, host: IpAddr) -> String {
    let host = match host {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

fn check(cfg: &LoadConfig, limits: &HostLimits) -> Result<()> {
    if cfg.conns == 0 {
        return Err(Error::BadFlag("--conns must be at least 1".into()));
    }
    if cfg.size == 0 || cfg.size > MAX_SIZE {
        return Err(Error::BadFlag(format!(
            "--size must be from 1 to {MAX_SIZE} bytes"
        )));
    }
    if cfg.data_size == 0 || cfg.data_size > MAX_SIZE {
        return Err(Error::BadFlag(format!(
            "--data-size must be from 1 to {MAX_SIZE} bytes"
        )));
    }
    if cfg.proto == Proto::Redis && cfg.key_maximum < cfg.conns - 1 {
        return Err(Error::BadFlag(format!(
            "--key-maximum {} leaves some of the {} connections without a key of their own: \
             give at least {}",
            cfg.key_maximum,
            cfg.conns,
            cfg.conns - 1
        )));
    }
    if cfg.proto == Proto::Http
        && (!cfg.path.starts_with('/') || !cfg.path.bytes().all(|b| (0x21..=0x7E).contains(&b)))
    {
        return Err(Error::BadFlag(format!(
            "--path `{}` must start with / and hold no spaces or control characters",
            cfg.path
        )));
    }
    if cfg.pipeline == 0 || cfg.depth == 0 {
        return Err(Error::BadFlag(
            "--pipeline and --depth must be at least 1".into(),
        ));
    }
    if cfg.pipeline > 1 && (cfg.proto == Proto::Echo || cfg.rate.is_some()) {
        return Err(Error::BadFlag(
            "--pipeline is for HTTP and Redis in the closed loop (without --rate)".into(),
        ));
    }
    if u64::from(cfg.pipeline) * u64::from(cfg.depth) > MAX_OUTSTANDING {
        return Err(Error::BadFlag(format!(
            "--depth times --pipeline may be at most {MAX_OUTSTANDING} requests per connection"
        )));
    }
    if cfg.connect_inflight == 0 {
        return Err(Error::BadFlag(
            "--connect-inflight must be at least 1".into(),
        ));
    }
    // Each (source address, server port) pair has the ephemeral range's worth of connections:
    // the kernel picks a source port unique per 4-tuple. IPv6 takes its ports from the same
    // net.ipv4.ip_local_port_range; what differs per family is where more sources come from.
    let range = u64::from(limits.port_range.1.saturating_sub(limits.port_range.0)) + 1;
    let sources = cfg.sources.len().max(1) as u64;
    let reach = range * cfg.ports.len() as u64 * sources;
    if cfg.conns > reach {
        let from = match cfg.sources.len() {
            0 | 1 => format!("one {} source address", family(cfg.host)),
            n => format!("{n} {} source addresses", family(cfg.host)),
        };
        let more_sources = match cfg.host {
            IpAddr::V4(_) => {
                "more --sources (addresses of this host; on loopback, any of 127.0.0.0/8)"
            }
            IpAddr::V6(_) => {
                "more --sources (addresses of this host; IPv6 loopback is ::1 alone, so add some \
                 first: `ip -6 addr add fd00::1/128 dev lo`)"
            }
        };
        return Err(Error::Limit {
            what: format!(
                "{} connections from {from} to {} ports need more than the {range} ephemeral ports \
                 per source and destination (net.ipv4.ip_local_port_range {}-{}, IPv6 too): at most {reach}",
                cfg.conns,
                cfg.ports.len(),
                limits.port_range.0,
                limits.port_range.1
            ),
            fix: format!(
                "use at least {} --ports (the server must listen on them too), or {more_sources}",
                cfg.conns.div_ceil(range * sources)
            ),
        });
    }
    if limits.nofile_soft < 256 {
        return Err(Error::Limit {
            what: format!(
                "RLIMIT_NOFILE is {}, which caps each ring's fixed-file table",
                limits.nofile_soft
            ),
            fix: "run where `ulimit -n` is at least 256".into(),
        });
    }
    Ok(())
}

pub fn run(cfg: &LoadConfig) -> Result<Report> {
    let limits = HostLimits::read().map_err(|e| Error::io("reading host limits", e))?;
    check(cfg, &limits)?;
    let cpus = sys::allowed_cpus().map_err(|e| Error::io("sched_getaffinity", e))?;
    let cores = cfg.cores.unwrap_or(cpus.len()).clamp(1, cpus.len());
    let shards = plan::load_shards(cfg.conns, cores, &limits);
    let addrs: Vec<SocketAddr> = cfg
        .ports
        .ports()
        .iter()
        .map(|p| SocketAddr::new(cfg.host, *p))
        .collect();
    let sources: Vec<SocketAddr> = cfg
        .sources
        .iter()
        .map(|ip| SocketAddr::new(*ip, 0))
        .collect();
    let (size, pattern, kind) = match cfg.proto {
        Proto::Echo => (
            cfg.size,
            pattern(cfg.size + PATTERN_SPREAD, cfg.seed),
            Requests::Echo,
        ),
        Proto::Http => {
            let get = http_get(&cfg.path, cfg.host);
            // Enough copies for every batch outstanding to go out in one send.
            let copies = (cfg.depth * cfg.pipeline).max(16) as usize;
            let region = get.repeat(copies).into_bytes().into_boxed_slice();
            (get.len(), region, Requests::Http { copies })
        }
        Proto::Redis => {
            let commands = Commands {
                sets: cfg.ratio.sets,
                gets: cfg.ratio.gets,
                conns: cfg.conns,
                key_maximum: cfg.key_maximum,
                key_prefix: cfg.key_prefix.clone().into_bytes(),
                data_size: cfg.data_size,
                ttl: cfg.key_ttl,
                seed: cfg.seed,
            };
            (
                cfg.data_size,
                Box::default(),
                Requests::Redis(Arc::new(commands)),
            )
        }
    };
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let (cpu0_user, cpu0_sys) = sys::cpu_times(false);
    let (tx, intervals_rx) = mpsc::channel();
    let intervals_tx = cfg.hlog.as_ref().map(|_| tx);

    let mut handles = Vec::with_capacity(shards);
    let mut first = 0u64;
    for i in 0..shards {
        let conns =
            (cfg.conns / shards as u64 + u64::from((i as u64) < cfg.conns % shards as u64)) as u32;
        let share = f64::from(conns) / cfg.conns as f64;
        let plan = ShardPlan {
            first_conn: first,
            conns,
            shards,
            addrs: addrs.clone(),
            sources: sources.clone(),
            size,
            pattern: pattern.clone(),
            kind: kind.clone(),
            workload: match cfg.rate {
                Some(rate) => Workload::Open { rate: rate * share },
                None => Workload::Closed {
                    depth: cfg.depth,
                    pipeline: cfg.pipeline,
                },
            },
            warmup: cfg.warmup,
            duration: cfg.duration,
            requests: cfg.requests,
            connect_inflight: cfg.connect_inflight,
            connect_rate: cfg.connect_rate.map(|r| r * share),
            bufs: 4096,
            buf_size: 4096,
            batch_usec: cfg.batch_usec,
            intervals: intervals_tx.clone(),
        };
        first += u64::from(conns);
        let cpu = cpus[i % cores];
        let shared = shared.clone();
        let h = thread::Builder::new()
            .name(format!("load-{i}"))
            .spawn(move || {
                let r = sys::pin_current_thread(cpu)
                    .and_then(|()| LoadShard::new(plan, shared.clone()))
                    .and_then(LoadShard::run);
                if r.is_err() {
                    shared.abort.store(true, Relaxed);
                }
                r
            })
            .map_err(|e| Error::io("spawning a load thread", e))?;
        handles.push(h);
    }

    drop(intervals_tx);
    let measure_start = SystemTime::now() + cfg.warmup;
    let mut intervals: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let progress = cfg.progress.then(|| Progress::new(cfg.conns));
    let mut last = Instant::now();
    let mut last_requests = 0;
    let mut ramp_s = None;
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(50));
        if ramp_s.is_none() && shared.ramped.load(Relaxed) >= shards {
            ramp_s = Some(started.elapsed().as_secs_f64());
        }
        for (second, h) in intervals_rx.try_iter() {
            merge_into(&mut intervals, second, &h);
        }
        if let Some(progress) = &progress {
            if last.elapsed() >= Duration::from_secs(1) {
                let dt = last.elapsed().as_secs_f64();
                last = Instant::now();
                let requests = shared.requests.load(Relaxed);
                let rps = (requests - last_requests) as f64 / dt;
                progress.report(cfg, &shared, started, rps);
                last_requests = requests;
            }
        }
    }
    if let Some(progress) = &progress {
        progress.finish();
    }
    for (second, h) in intervals_rx.try_iter() {
        merge_into(&mut intervals, second, &h);
    }
    if let Some(path) = &cfg.hlog {
        hlog::write(path, measure_start, &intervals)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }

    let mut reports = Vec::with_capacity(shards);
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                return Err(Error::Shard {
                    shard: i,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(Error::Shard {
                    shard: i,
                    reason: "panicked".into(),
                });
            }
        }
    }
    let (user, sys_s) = sys::cpu_times(false);
    let mut latency = shard::histogram();
    let mut uncorrected = shard::histogram();
    let mut connect = shard::histogram();
    let mut errors = BTreeMap::new();
    let mut redis = RedisCounts::default();
    let (mut established, mut failed, mut by_peer, mut requests) = (0, 0, 0, 0);
    for r in &reports {
        latency.add(&r.latency_us).expect("same bounds");
        uncorrected.add(&r.uncorrected_us).expect("same bounds");
        connect.add(&r.connect_us).expect("same bounds");
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        redis.sets += r.redis.sets;
        redis.gets += r.redis.gets;
        redis.hits += r.redis.hits;
        redis.misses += r.redis.misses;
        established += r.established;
        failed += r.failed;
        by_peer += r.closed_by_peer;
        requests += r.requests;
    }
    // A counted run lasts until its last answer; a timed run is its measured window.
    let secs = match cfg.requests {
        Some(_) => started.elapsed().as_secs_f64(),
        None => cfg.duration.as_secs_f64(),
    };
    Ok(Report {
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        proto: match cfg.proto {
            Proto::Echo => "echo",
            Proto::Http => "http",
            Proto::Redis => "redis",
        },
        pipeline: cfg.pipeline,
        rate_rps: cfg.rate,
        conns_requested: cfg.conns,
        conns_established: established,
        conns_failed: failed,
        conns_closed_by_peer: by_peer,
        ramp_s: ramp_s.unwrap_or_else(|| started.elapsed().as_secs_f64()),
        requests,
        errors,
        duration_s: secs,
        throughput_rps: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        size,
        redis: (cfg.proto == Proto::Redis).then_some(redis),
        latency_us: Percentiles::of(&latency),
        latency_uncorrected_us: cfg.rate.map(|_| Percentiles::of(&uncorrected)),
        connect_us: Percentiles::of(&connect),
        client_cpu: ClientCpu {
            user_s: user - cpu0_user,
            sys_s: sys_s - cpu0_sys,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(conns: u64, ports: &str) -> LoadConfig {
        LoadConfig {
            host: IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
            ports: ports.parse().unwrap(),
            sources: Vec::new(),
            conns,
            proto: Proto::Echo,
            size: 64,
            path: "/plaintext".into(),
            pipeline: 1,
            ratio: Ratio { sets: 1, gets: 10 },
            key_maximum: 10_000_000,
            key_prefix: "memtier-".into(),
            data_size: 32,
            key_ttl: None,
            depth: 1,
            rate: None,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            requests: None,
            cores: None,
            connect_inflight: 256,
            connect_rate: None,
            seed: 1,
            hlog: None,
            batch_usec: 0,
            progress: false,
        }
    }

    fn host() -> HostLimits {
        HostLimits::measured_here()
    }

    #[test]
    fn too_few_ports_for_the_connections_names_the_fix() {
        let msg = check(&cfg(1_000_000, "6000-6009"), &host())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("from one IPv4 source address"), "{msg}");
        assert!(msg.contains("at most 645120"), "{msg}");
        assert!(msg.contains("use at least 16 --ports"), "{msg}");
        assert!(msg.contains("any of 127.0.0.0/8"), "{msg}");
        assert!(check(&cfg(1_000_000, "6000-6049"), &host()).is_ok());
    }

    #[test]
    fn each_source_address_adds_the_ephemeral_range_per_port() {
        let mut c = cfg(1_000_000, "6000-6009");
        c.sources = (1..=2).map(|i| IpAddr::from([127, 0, 0, i])).collect();
        assert!(check(&c, &host()).is_ok(), "2 x 10 x 64512");
        c.conns = 1_300_000;
        let msg = check(&c, &host()).unwrap_err().to_string();
        assert!(msg.contains("from 2 IPv4 source addresses"), "{msg}");
        assert!(msg.contains("at most 1290240"), "{msg}");
        assert!(msg.contains("use at least 11 --ports"), "{msg}");
    }

    #[test]
    fn ipv6_has_the_same_ports_per_source_and_names_its_family() {
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut c = cfg(1_000_000, "6000-6009");
        c.host = v6("::1");
        let msg = check(&c, &host()).unwrap_err().to_string();
        assert!(msg.contains("from one IPv6 source address"), "{msg}");
        assert!(msg.contains("at most 645120"), "{msg}");
        assert!(msg.contains("use at least 16 --ports"), "{msg}");
        assert!(msg.contains("IPv6 loopback is ::1 alone"), "{msg}");
        c.sources = vec![v6("fd00::1"), v6("fd00::2")];
        assert!(check(&c, &host()).is_ok(), "2 x 10 x 64512");
        c.conns = 1_300_000;
        let msg = check(&c, &host()).unwrap_err().to_string();
        assert!(msg.contains("from 2 IPv6 source addresses"), "{msg}");
        assert!(msg.contains("at most 1290240"), "{msg}");
    }

    #[test]
    fn sources_of_the_other_family_are_a_flag_error() {
        use clap::Parser;
        let args = |a: &[&str]| LoadCli::parse_from([&["uring-load"], a].concat()).run;
        let err = LoadConfig::new(&args(&["--host", "::1", "--sources", "127.0.0.1"])).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string()
                .contains("--sources 127.0.0.1 is IPv4, --host ::1 is IPv6"),
            "{err}"
        );
        let err = LoadConfig::new(&args(&["--sources", "fd00::1-fd00::4"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("is IPv6, --host 127.0.0.1 is IPv4"),
            "{err}"
        );
        assert!(LoadConfig::new(&args(&["--host", "::1", "--sources", "::1"])).is_ok());
    }

    #[test]
    fn an_ipv6_host_is_bracketed_in_the_host_header() {
        assert_eq!(
            http_get("/plaintext", "::1".parse().unwrap()),
            "GET /plaintext HTTP/1.1\r\nHost: [::1]\r\n\r\n"
        );
        assert_eq!(
            http_get("/", "127.0.0.1".parse().unwrap()),
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn zero_sizes_are_flag_errors() {
        assert!(check(&cfg(0, "6000"), &host()).is_err());
        let mut c = cfg(1, "6000");
        c.size = 0;
        assert!(check(&c, &host()).is_err());
    }

    #[test]
    fn http_flags_are_checked() {
        let mut c = cfg(1, "6000");
        c.pipeline = 4;
        assert!(
            check(&c, &host())
                .unwrap_err()
                .to_string()
                .contains("--pipeline is for HTTP and Redis")
        );
        c.proto = Proto::Http;
        assert!(check(&c, &host()).is_ok());
        c.rate = Some(100.0);
        assert!(check(&c, &host()).is_err());
        c.rate = None;
        c.depth = 2048;
        assert!(
            check(&c, &host())
                .unwrap_err()
                .to_string()
                .contains("at most 4096")
        );
        c.depth = 1;
        c.path = "plaintext".into();
        assert!(
            check(&c, &host())
                .unwrap_err()
                .to_string()
                .contains("must start with /")
        );
        c.path = "/a b".into();
        assert!(check(&c, &host()).is_err());
    }

    #[test]
    fn the_pattern_is_deterministic_and_varied() {
        let a = pattern(4096, 7);
        assert_eq!(a, pattern(4096, 7));
        assert_ne!(a, pattern(4096, 8));
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
