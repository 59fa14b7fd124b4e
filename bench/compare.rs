//! Reactor (epoll-server) vs Proactor (uring-server) on identical work: `cargo bench --bench compare`
//!
//! Each point is echo at a connection count and payload size, either closed loop to
//! saturation or open loop at a fixed rate (a share of the Reactor's saturation measured just
//! before). Each run starts a fresh server pinned to the server cores and drives it with
//! `uring-load` pinned to the load cores; the engines alternate (which goes first flips every
//! repetition) and medians are reported with their spread. Per point and engine: throughput,
//! latency p50/p99/p99.9/max, server CPU user and sys per request, syscalls per request (the
//! servers' own counters), context switches per 1,000 requests, server memory per connection
//! (resident set growth over idle, divided by the connections), and the Proactor/Reactor
//! ratio of each. Writes bench/results/<date>-<kernel>.md, .json and .svg (latency spectra).
//! Flags: `-- --help`.

#[path = "common.rs"]
mod common;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "compare",
    override_usage = "cargo bench --bench compare [-- OPTIONS]",
    about = "Reactor vs Proactor on identical echo work"
)]
struct Flags {
    /// Sets conns 50,500,5000,50000; sizes 64,1024; rates 25,50,75,90 % (where not given)
    #[arg(long)]
    full: bool,
    /// Connection counts [default: 50,500,5000]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    conns: Option<Vec<u64>>,
    /// Payload sizes in bytes [default: 64]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Open-loop rates in % of the Reactor's saturation [default: 50,90]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    rates: Option<Vec<u32>>,
    #[command(flatten)]
    runs: common::Runs,
    #[command(flatten)]
    cpus: common::Cpus,
    #[command(flatten)]
    output: common::Output,
}

/// The flags with `--full` and the defaults applied.
struct Opts {
    conns: Vec<u64>,
    sizes: Vec<usize>,
    rates: Vec<u32>,
    runs: common::Runs,
    cpus: common::Cpus,
    out: String,
    argv: String,
}

fn opts() -> Opts {
    // Runs of 3 s: this bench runs the most points.
    let (f, args) = common::parse::<Flags>(|c| c.mut_arg("duration", |a| a.default_value("3")));
    Opts {
        conns: list(f.conns, f.full, &[50, 500, 5000, 50_000], &[50, 500, 5000]),
        sizes: list(f.sizes, f.full, &[64, 1024], &[64]),
        rates: list(f.rates, f.full, &[25, 50, 75, 90], &[50, 90]),
        runs: f.runs,
        cpus: f.cpus,
        out: f.output.out,
        argv: args.join(" "),
    }
}

/// A list as given, else its `--full` value or its default.
fn list<T: Clone>(given: Option<Vec<T>>, full: bool, when_full: &[T], default: &[T]) -> Vec<T> {
    given.unwrap_or_else(|| if full { when_full } else { default }.to_vec())
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Epoll,
    Uring,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Epoll => "epoll",
            Engine::Uring => "uring",
        }
    }

    /// Its binary's name, as the legend names it.
    fn bin_name(self) -> &'static str {
        match self {
            Engine::Epoll => "epoll-server",
            Engine::Uring => "uring-server",
        }
    }

    /// Its colour in the plots (as in the cost bench's).
    fn color(self) -> RGBColor {
        match self {
            Engine::Epoll => RGBColor(214, 39, 40),
            Engine::Uring => RGBColor(31, 119, 180),
        }
    }

    fn bin(self) -> &'static str {
        match self {
            Engine::Epoll => env!("CARGO_BIN_EXE_epoll-server"),
            Engine::Uring => env!("CARGO_BIN_EXE_uring-server"),
        }
    }
}

/// What one run measured.
#[derive(Clone, Default)]
struct Run {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    user_us_per_req: f64,
    sys_us_per_req: f64,
    syscalls_per_req: f64,
    ctx_per_kreq: f64,
    mem_per_conn: f64,
}

const PORTS: usize = 4;

fn run(o: &Opts, engine: Engine, conns: u64, size: usize, rate: Option<f64>) -> Run {
    let ports = common::free_ports(PORTS);
    let stats = std::env::temp_dir().join(format!("c1m-compare-{}.json", std::process::id()));
    let load_json =
        std::env::temp_dir().join(format!("c1m-compare-load-{}.json", std::process::id()));
    let max_conns = (conns + conns / 4).max(1000).to_string();
    let cores = o.cpus.server_cpus.count().to_string();
    let server = common::Proc::server_on(
        o.cpus.server_cpus.as_str(),
        engine.bin(),
        &[
            "--host",
            "127.0.0.1",
            "--ports",
            &ports,
            "--cores",
            &cores,
            "--max-conns",
            &max_conns,
            "--stats-json",
            stats.to_str().unwrap(),
        ],
    );
    let pids = common::family(server.child.id());
    let rss0 = common::status_sum(&pids, "VmRSS:", false);
    let ctx0 = common::status_sum(&pids, "voluntary_ctxt_switches:", true)
        + common::status_sum(&pids, "nonvoluntary_ctxt_switches:", true);
    // Sample the server's resident set while the connections are open.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(rss0));
    let sampler = {
        let (done, peak, pids) = (done.clone(), peak.clone(), pids.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(
                    common::status_sum(&pids, "VmRSS:", false),
                    Ordering::Relaxed,
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut load = Command::new("taskset");
    load.args([
        "-c",
        o.cpus.load_cpus.as_str(),
        env!("CARGO_BIN_EXE_uring-load"),
    ])
    .args([
        "--ports",
        &ports,
        "--conns",
        &conns.to_string(),
        "--size",
        &size.to_string(),
    ])
    .args(["--cores", &o.cpus.load_cpus.count().to_string()])
    .args([
        "--duration",
        &o.runs.duration.to_string(),
        "--warmup",
        &o.runs.warmup.to_string(),
    ])
    .args(["--quiet", "--allow-partial", "--json"])
    .arg(&load_json)
    .stdout(Stdio::null());
    if let Some(r) = rate {
        load.args(["--rate", &format!("{r:.0}")]);
    }
    let st = load.status().expect("run uring-load");
    assert!(st.success(), "uring-load failed");
    let ctx1 = common::status_sum(&pids, "voluntary_ctxt_switches:", true)
        + common::status_sum(&pids, "nonvoluntary_ctxt_switches:", true);
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    server.stop();
    let l: Value = serde_json::from_str(&std::fs::read_to_string(&load_json).unwrap()).unwrap();
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let _ = std::fs::remove_file(&stats);
    let errors: u64 = l["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    if errors > 0 || l["conns_established"].as_u64() != Some(conns) {
        eprintln!(
            "compare: warning: {} {conns} conns: {} established, errors {}",
            engine.name(),
            l["conns_established"],
            l["errors"]
        );
    }
    // Every echo the server made over the whole run (connect, warm-up and grace included),
    // against its CPU and syscalls over the same run.
    let echoes = (s["totals"]["bytes_out"].as_u64().unwrap() as f64 / size as f64).max(1.0);
    let lat = |k: &str| l["latency_us"][k].as_f64().unwrap();
    Run {
        rps: l["throughput_rps"].as_f64().unwrap(),
        p50: lat("p50"),
        p99: lat("p99"),
        p999: lat("p999"),
        max: lat("max"),
        user_us_per_req: s["cpu_user_s"].as_f64().unwrap() * 1e6 / echoes,
        sys_us_per_req: s["cpu_sys_s"].as_f64().unwrap() * 1e6 / echoes,
        syscalls_per_req: s["totals"]["syscalls"].as_f64().unwrap() / echoes,
        ctx_per_kreq: ctx1.saturating_sub(ctx0) as f64 * 1000.0 / echoes,
        mem_per_conn: peak.load(Ordering::Relaxed).saturating_sub(rss0) as f64 * 1024.0
            / conns as f64,
    }
}

/// Median of each metric over the runs, and the min-max of throughput and p99.
fn summarize(runs: &[Run]) -> Value {
    let med = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        common::median(&mut v)
    };
    let span = |f: fn(&Run) -> f64| {
        let v: Vec<f64> = runs.iter().map(f).collect();
        [
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        ]
    };
    json!({
        "rps": med(|r| r.rps), "rps_span": span(|r| r.rps),
        "p50_us": med(|r| r.p50), "p99_us": med(|r| r.p99), "p99_span": span(|r| r.p99),
        "p999_us": med(|r| r.p999), "max_us": med(|r| r.max),
        "cpu_user_us_per_req": med(|r| r.user_us_per_req), "cpu_sys_us_per_req": med(|r| r.sys_us_per_req),
        "syscalls_per_req": med(|r| r.syscalls_per_req), "ctx_switches_per_1k_req": med(|r| r.ctx_per_kreq),
        "mem_bytes_per_conn": med(|r| r.mem_per_conn),
    })
}

fn main() {
    let o = opts();
    let started = Instant::now();
    let mut points = Vec::new();
    for &size in &o.sizes {
        for &conns in &o.conns {
            let mut modes: Vec<Option<u32>> = vec![None];
            modes.extend(o.rates.iter().map(|r| Some(*r)));
            let mut reactor_sat = 0.0;
            for pct in modes {
                let rate = pct.map(|p| reactor_sat * f64::from(p) / 100.0);
                let (mut e, mut u) = (Vec::new(), Vec::new());
                for rep in 0..o.runs.reps {
                    let label = pct.map_or("closed".to_string(), |p| format!("{p}% rate"));
                    eprintln!(
                        "compare: {conns} conns, {size} B, {label}, rep {}/{} ({:.0}s)",
                        rep + 1,
                        o.runs.reps,
                        started.elapsed().as_secs_f64()
                    );
                    let order = if rep % 2 == 0 {
                        [Engine::Epoll, Engine::Uring]
                    } else {
                        [Engine::Uring, Engine::Epoll]
                    };
                    for engine in order {
                        let r = run(&o, engine, conns, size, rate);
                        match engine {
                            Engine::Epoll => e.push(r),
                            Engine::Uring => u.push(r),
                        }
                    }
                }
                let (es, us) = (summarize(&e), summarize(&u));
                if pct.is_none() {
                    reactor_sat = es["rps"].as_f64().unwrap();
                }
                points.push(json!({
                    "conns": conns, "size": size,
                    "mode": pct.map_or("closed".to_string(), |p| format!("open {p}%")),
                    "rate_rps": rate, "epoll": es, "uring": us,
                }));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    write_results(&o, &points, secs);
}

fn ratio(p: &Value, key: &str) -> f64 {
    p["uring"][key].as_f64().unwrap() / p["epoll"][key].as_f64().unwrap().max(1e-9)
}

/// The target of issue 5 at this point: at 500 connections and above, 64 B echo, the
/// Proactor's throughput >= 1.3x, syscalls per request <= 1/10, and at fixed rates a p99 no
/// worse than the Reactor's.
fn verdict(p: &Value) -> &'static str {
    if p["conns"].as_u64().unwrap() < 500 || p["size"].as_u64().unwrap() != 64 {
        return "";
    }
    let syscalls_ok = ratio(p, "syscalls_per_req") <= 0.1;
    let ok = if p["mode"] == "closed" {
        ratio(p, "rps") >= 1.3 && syscalls_ok
    } else {
        ratio(p, "p99_us") <= 1.0 && syscalls_ok
    };
    if ok { "meets" } else { "MISSES" }
}

fn write_results(o: &Opts, points: &[Value], secs: f64) {
    let cmd = if o.argv.is_empty() {
        "cargo bench --bench compare".to_string()
    } else {
        format!("cargo bench --bench compare -- {}", o.argv)
    };
    let (date, kernel, commit) = (common::today(), common::kernel(), common::commit());
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Reactor (epoll) vs Proactor (io_uring): echo\n\n{date} · kernel {kernel} · commit {commit} · {} · {secs:.0} s\n\n`{cmd}`\n\n\
         Server pinned to CPUs {} (`--cores {}`), `uring-load` pinned to CPUs {}; a fresh server per run; engines alternate, \
         {} repetitions, medians (throughput and p99 with min-max). Open-loop rates are shares of the Reactor's closed-loop \
         saturation at that point. CPU, syscalls and context switches are the server's over the whole run divided by every \
         echo it made; memory is its resident-set growth per connection (user space only: kernel socket memory is not in it). \
         Ratio = Proactor / Reactor. Target (issue 5): at 500 connections and above, 64 B, throughput ratio >= 1.3 and \
         syscalls ratio <= 0.1 closed loop; p99 ratio <= 1 at every fixed rate.\n",
        common::machine(),
        o.cpus.server_cpus,
        o.cpus.server_cpus.count(),
        o.cpus.load_cpus,
        o.runs.reps
    );
    let _ = writeln!(
        md,
        "## Throughput and latency\n\n| conns | size | mode | req/s epoll | req/s uring | ratio | p50 us e / u | p99 us e / u | p99 ratio | p99.9 us e / u | max us e / u | target |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in points {
        let (e, u) = (&p["epoll"], &p["uring"]);
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        let span = |v: &Value, k: &str| {
            format!(
                "{:.0}-{:.0}",
                v[k][0].as_f64().unwrap(),
                v[k][1].as_f64().unwrap()
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} ({}) | {:.0} ({}) | {:.2} | {:.0} / {:.0} | {:.0} ({}) / {:.0} ({}) | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {} |",
            p["conns"],
            p["size"],
            p["mode"].as_str().unwrap(),
            f(e, "rps"),
            span(e, "rps_span"),
            f(u, "rps"),
            span(u, "rps_span"),
            ratio(p, "rps"),
            f(e, "p50_us"),
            f(u, "p50_us"),
            f(e, "p99_us"),
            span(e, "p99_span"),
            f(u, "p99_us"),
            span(u, "p99_span"),
            ratio(p, "p99_us"),
            f(e, "p999_us"),
            f(u, "p999_us"),
            f(e, "max_us"),
            f(u, "max_us"),
            verdict(p)
        );
    }
    let _ = writeln!(
        md,
        "\n## Cost per request\n\n| conns | size | mode | CPU user us e / u | CPU sys us e / u | CPU ratio | syscalls e / u | syscalls ratio | ctx switches per 1k e / u | memory per conn B e / u |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in points {
        let (e, u) = (&p["epoll"], &p["uring"]);
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        let cpu = |v: &Value| f(v, "cpu_user_us_per_req") + f(v, "cpu_sys_us_per_req");
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.2} / {:.3} | {:.3} | {:.1} / {:.1} | {:.0} / {:.0} |",
            p["conns"],
            p["size"],
            p["mode"].as_str().unwrap(),
            f(e, "cpu_user_us_per_req"),
            f(u, "cpu_user_us_per_req"),
            f(e, "cpu_sys_us_per_req"),
            f(u, "cpu_sys_us_per_req"),
            cpu(u) / cpu(e).max(1e-9),
            f(e, "syscalls_per_req"),
            f(u, "syscalls_per_req"),
            ratio(p, "syscalls_per_req"),
            f(e, "ctx_switches_per_1k_req"),
            f(u, "ctx_switches_per_1k_req"),
            f(e, "mem_bytes_per_conn"),
            f(u, "mem_bytes_per_conn"),
        );
    }
    let base = format!("{}/{date}-{kernel}", o.out);
    let svg_name = format!("{date}-{kernel}.svg");
    let _ = writeln!(md, "\n![latency spectra]({svg_name})");
    println!("{md}");
    std::fs::create_dir_all(&o.out).unwrap();
    std::fs::write(format!("{base}.md"), &md).unwrap();
    std::fs::write(format!("{base}.svg"), svg(points).unwrap()).unwrap();
    let doc = json!({
        "bench": "compare", "date": date, "kernel": kernel, "commit": commit, "machine": common::machine(),
        "command": cmd, "server_cpus": o.cpus.server_cpus.as_str(),
        "load_cpus": o.cpus.load_cpus.as_str(), "reps": o.runs.reps,
        "duration_s": o.runs.duration, "warmup_s": o.runs.warmup, "points": points,
    });
    std::fs::write(
        format!("{base}.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    eprintln!("wrote {base}.md, .json and .svg");
}

/// Latency percentile spectra, Reactor vs Proactor, one panel per connection count: the
/// highest open-loop rate at the first size (closed loop where no rate was run).
fn svg(points: &[Value]) -> Result<String, String> {
    let size0 = points[0]["size"].clone();
    let mut conns: Vec<u64> = points
        .iter()
        .map(|p| p["conns"].as_u64().unwrap())
        .collect();
    conns.dedup();
    let mut svg = String::new();
    {
        // At least as wide as the title.
        let width = (40 + 380 * conns.len() as u32).max(600);
        let root = SVGBackend::with_string(&mut svg, (width, 380)).into_drawing_area();
        let err = |e: DrawingAreaErrorKind<_>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(
                "Latency percentile spectrum: epoll-server vs uring-server",
                ("sans-serif", 20),
            )
            .map_err(err)?;
        for (area, c) in root.split_evenly((1, conns.len())).iter().zip(&conns) {
            let p = points
                .iter()
                .rfind(|p| p["conns"].as_u64() == Some(*c) && p["size"] == size0)
                .unwrap();
            spectrum(area, p)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The percentiles a spectrum shows, as the points' keys and as labelled.
const SPECTRUM: [(&str, &str); 4] = [
    ("p50_us", "p50"),
    ("p99_us", "p99"),
    ("p999_us", "p99.9"),
    ("max_us", "max"),
];

/// One point's spectrum: a line per engine over the percentiles, latency on a log axis.
fn spectrum(area: &DrawingArea<SVGBackend, Shift>, p: &Value) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    // A log axis cannot show 0; a latency under 1 us is drawn at 1.
    let us = |e: Engine, k: &str| p[e.name()][k].as_f64().unwrap().max(1.0);
    let all: Vec<f64> = [Engine::Epoll, Engine::Uring]
        .iter()
        .flat_map(|&e| SPECTRUM.iter().map(move |(k, _)| us(e, k)))
        .collect();
    // Whole decades: the log axis labels them cleanly.
    let lo = all.iter().cloned().fold(f64::MAX, f64::min).log10().floor();
    let hi = all
        .iter()
        .cloned()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let caption = format!(
        "{} connections, {} B, {}",
        p["conns"],
        p["size"],
        p["mode"].as_str().unwrap()
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (0..SPECTRUM.len() as i32 - 1).into_segmented(),
            (10f64.powf(lo)..10f64.powf(hi)).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .x_label_formatter(&|v| match v {
            SegmentValue::Exact(j) | SegmentValue::CenterOf(j) => SPECTRUM
                .get(*j as usize)
                .map_or_else(String::new, |s| s.1.to_string()),
            SegmentValue::Last => String::new(),
        })
        .y_desc("latency us (log)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for e in [Engine::Epoll, Engine::Uring] {
        let color = e.color();
        let xy: Vec<(SegmentValue<i32>, f64)> = SPECTRUM
            .iter()
            .enumerate()
            .map(|(j, (k, _))| (SegmentValue::CenterOf(j as i32), us(e, k)))
            .collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(e.bin_name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(xy.into_iter().map(|xy| Circle::new(xy, 3, color.filled())))
            .map_err(err)?;
    }
    // A spectrum rises to the right: the upper left is free.
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}
