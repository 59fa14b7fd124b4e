//! uring-load against real servers and against small misbehaving servers of our own: counts
//! and verification are exact, and every way a server can fail is reported as such.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use c1m::uring::probe::Need;
use common::{Engine, Server, free_ports, load, u};
use serde_json::Value;

/// A one-port server of our own that handles each connection with `handle` in a thread.
fn misbehaving(handle: fn(TcpStream)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || handle(s));
        }
    });
    port.to_string()
}

fn echo_with(mut s: TcpStream, corrupt_at: Option<usize>) {
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            return;
        }
        if let Some(at) = corrupt_at
            && (total..total + n).contains(&at)
        {
            buf[at - total] ^= 0x20;
        }
        total += n;
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

#[test]
fn a_server_that_corrupts_one_byte_is_caught() {
    let port = misbehaving(|s| echo_with(s, Some(1000)));
    let (code, r) = load(
        &port,
        &[
            "--conns",
            "3",
            "--size",
            "600",
            "--requests",
            "4",
            "--duration",
            "10",
        ],
    );
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "errors.verify_mismatch"), 3, "{r}");
    // Each connection's first request verified; the second carried the bad byte.
    assert_eq!(u(&r, "requests"), 3);
}

#[test]
fn a_server_that_resets_is_reported() {
    let port = misbehaving(|s| {
        let mut buf = [0u8; 16];
        let _ = (&s).read(&mut buf);
        socket2::Socket::from(s)
            .set_linger(Some(Duration::ZERO))
            .unwrap(); // dropping it now sends RST
    });
    let (code, r) = load(
        &port,
        &["--conns", "5", "--requests", "3", "--duration", "10"],
    );
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "conns_established"), 5);
    assert_eq!(u(&r, "requests"), 0);
    assert_eq!(u(&r, "errors.recv:connection_reset"), 5, "{r}");
}

#[test]
fn a_server_that_never_answers_is_not_a_pass() {
    let port = misbehaving(|mut s| {
        let mut buf = [0u8; 4096];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    // Counted mode ends at --duration at the latest, timed mode after it: both fail loudly.
    let (code, r) = load(
        &port,
        &["--conns", "4", "--requests", "1", "--duration", "1"],
    );
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "errors.unanswered_at_end"), 4, "{r}");
    let (code, r) = load(&port, &["--conns", "4", "--duration", "1"]);
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "requests"), 0);
    assert_eq!(u(&r, "errors.unanswered_at_end"), 4, "{r}");
}

fn open_loop_throughput_matches_the_rate_and_reports_both_latencies(engine: Engine) {
    let ports = free_ports(2);
    let server = Server::start(engine, &ports, &[]);
    let (code, r) = load(
        &ports,
        &[
            "--conns",
            "200",
            "--rate",
            "4000",
            "--duration",
            "3",
            "--warmup",
            "0.5",
        ],
    );
    assert_eq!(code, 0, "{engine:?}: {r}");
    assert_eq!(r["mode"], "open");
    let rps = r["throughput_rps"].as_f64().unwrap();
    assert!(
        (rps - 4000.0).abs() < 4000.0 * 0.03,
        "{engine:?}: {rps} req/s for 4000 asked"
    );
    let requests = u(&r, "requests");
    assert!(
        (11_640..=12_360).contains(&requests),
        "{requests} in 3 s at 4000/s"
    );
    let corrected = &r["latency_us"];
    let raw = &r["latency_uncorrected_us"];
    // Latency from the schedule can only be longer than from the actual send.
    assert!(corrected["max"].as_u64() >= raw["max"].as_u64(), "{r}");
    assert!(corrected["p50"].as_u64() >= raw["p50"].as_u64(), "{r}");
    server.stop();
}

common::per_engine!(open_loop_throughput_matches_the_rate_and_reports_both_latencies);

fn assert_percentiles(v: &Value, what: &str) {
    for key in ["p50", "p90", "p99", "p999", "p9999", "max"] {
        assert!(v[key].is_u64(), "{what}.{key} in {v}");
    }
    assert!(v["p50"].as_u64() <= v["p99"].as_u64() && v["p99"].as_u64() <= v["max"].as_u64());
}

#[test]
fn the_json_report_has_the_documented_schema() {
    let ports = free_ports(1);
    let server = Server::start(Engine::Uring, &ports, &[]);
    let (code, r) = load(
        &ports,
        &["--conns", "10", "--duration", "1", "--depth", "4"],
    );
    assert_eq!(code, 0, "{r}");
    for key in [
        "conns_requested",
        "conns_established",
        "conns_failed",
        "conns_closed_by_peer",
        "requests",
        "size",
    ] {
        assert!(r[key].is_u64(), "{key} in {r}");
    }
    for key in ["duration_s", "throughput_rps"] {
        assert!(r[key].is_f64(), "{key} in {r}");
    }
    assert!(r["errors"].as_object().unwrap().is_empty());
    assert_eq!(r["mode"], "closed");
    assert!(
        r["latency_uncorrected_us"].is_null(),
        "closed loop has one latency"
    );
    assert_percentiles(&r["latency_us"], "latency_us");
    assert_percentiles(&r["connect_us"], "connect_us");
    assert!(r["client_cpu"]["user_s"].is_f64() && r["client_cpu"]["sys_s"].is_f64());
    assert_eq!(u(&r, "conns_established"), 10);
    server.stop();
}

#[test]
fn depth_keeps_several_requests_outstanding_on_each_connection() {
    let ports = free_ports(1);
    let server = Server::start(Engine::Uring, &ports, &[]);
    let (code, r) = load(
        &ports,
        &[
            "--conns",
            "5",
            "--depth",
            "8",
            "--size",
            "3000",
            "--requests",
            "40",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "requests"), 200);
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.bytes_out"), 200 * 3000);
}

#[test]
fn several_source_addresses_are_used() {
    if !common::kernel_has(Need::Bind, "several_source_addresses_are_used") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let peers: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
    let seen = peers.clone();
    thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            seen.lock().unwrap().insert(s.peer_addr().unwrap().ip());
            thread::spawn(move || echo_with(s, None));
        }
    });
    let (code, r) = load(
        &port,
        &[
            "--conns",
            "40",
            "--sources",
            "127.0.0.1-127.0.0.4",
            "--requests",
            "2",
            "--duration",
            "10",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "requests"), 80);
    let peers = peers.lock().unwrap();
    let expected: HashSet<IpAddr> = (1..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    assert_eq!(*peers, expected);
}

/// IPv6 source ranges. IPv6 loopback is ::1 alone, so this runs server and load in a network
/// namespace of its own (root, unshare(1), ip(8)) with fd00::1-fd00::4 on lo and 10
/// ephemeral ports: 40 connections to one port get there only if all four sources are
/// used, and 20 from one source to two ports only if IP_BIND_ADDRESS_NO_PORT holds on IPv6
/// (without it every bind takes a port of the 10 for itself). The two runs go to different
/// ports: the first run's closed connections hold their 4-tuples in TIME_WAIT.
#[test]
fn ipv6_source_ranges_are_used() {
    if !common::kernel_has(Need::Bind, "ipv6_source_ranges_are_used") {
        return;
    }
    if c1m::sys::user::euid() != 0
        || !Command::new("unshare")
            .args(["-n", "ip", "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED: a network namespace needs root, unshare(1) and ip(8)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("c1m-v6-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"
        server=$1 load=$2 dir=$3
        ip link set lo up
        for i in 1 2 3 4; do ip -6 addr add fd00::$i/128 dev lo nodad; done
        echo "40000 40009" > /proc/sys/net/ipv4/ip_local_port_range
        "$server" --host ::1 --ports 6000-6002 --cores 1 > "$dir/server.out" 2>&1 &
        pid=$!
        for _ in $(seq 100); do grep -q '^listening' "$dir/server.out" && break; sleep 0.05; done
        "$load" --host ::1 --ports 6000,6001 --sources fd00::1 --conns 20 --requests 2 \
            --quiet --json "$dir/one.json"
        "$load" --host ::1 --ports 6002 --sources fd00::1-fd00::4 --conns 40 --requests 2 \
            --quiet --json "$dir/four.json"
        kill "$pid"
        wait "$pid"
    "#;
    let out = Command::new("timeout")
        .args(["60", "unshare", "-n", "sh", "-c", script, "sh"])
        .arg(env!("CARGO_BIN_EXE_uring-server"))
        .arg(env!("CARGO_BIN_EXE_uring-load"))
        .arg(&dir)
        .output()
        .unwrap();
    let report = |name: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|_| {
            panic!(
                "no {name}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        serde_json::from_str(&text).unwrap()
    };
    let (four, one) = (report("four.json"), report("one.json"));
    let _ = std::fs::remove_dir_all(&dir);
    for (r, conns) in [(&four, 40), (&one, 20)] {
        assert_eq!(u(r, "conns_established"), conns, "{r}");
        assert_eq!(u(r, "requests"), conns * 2, "{r}");
        assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
    }
}

fn merge(logs: &[&std::path::Path]) -> Value {
    let json = std::env::temp_dir().join(format!("c1m-merge-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_uring-load"))
        .arg("merge")
        .args(logs)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    v
}

#[test]
fn merged_logs_equal_the_runs_they_came_from() {
    let ports = free_ports(2);
    let server = Server::start(Engine::Uring, &ports, &[]);
    let dir = std::env::temp_dir();
    let a = dir.join(format!("c1m-a-{}.hlog", std::process::id()));
    let b = dir.join(format!("c1m-b-{}.hlog", std::process::id()));
    let (code, ra) = load(
        &ports,
        &[
            "--conns",
            "20",
            "--duration",
            "2",
            "--hlog",
            a.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    let (code, rb) = load(
        &ports,
        &[
            "--conns",
            "30",
            "--rate",
            "3000",
            "--duration",
            "2",
            "--hlog",
            b.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0);
    server.stop();
    // One log merged is that run: the same count and spectrum.
    let ma = merge(&[&a]);
    assert_eq!(u(&ma, "requests"), u(&ra, "requests"));
    assert_eq!(ma["latency_us"], ra["latency_us"]);
    // Two logs merged: the counts add up, and the max is the larger max.
    let mab = merge(&[&a, &b]);
    assert_eq!(u(&mab, "requests"), u(&ra, "requests") + u(&rb, "requests"));
    assert_eq!(u(&mab, "logs"), 2);
    let max = u(&ra, "latency_us.max").max(u(&rb, "latency_us.max"));
    assert_eq!(u(&mab, "latency_us.max"), max);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
}

fn batched_waits_on_both_sides_answer_every_request(engine: Engine) {
    if !common::kernel_has(
        Need::MinTimeout,
        "batched_waits_on_both_sides_answer_every_request",
    ) {
        return;
    }
    let ports = free_ports(2);
    let server = Server::start(engine, &ports, &["--batch-usec", "500"]);
    let (code, r) = load(
        &ports,
        &[
            "--conns",
            "300",
            "--rate",
            "3000",
            "--duration",
            "2",
            "--batch-usec",
            "500",
        ],
    );
    assert_eq!(code, 0, "{r}");
    let requests = u(&r, "requests");
    assert!(
        (5_820..=6_180).contains(&requests),
        "{engine:?}: {requests} at 3000/s for 2 s"
    );
    let (code, r) = load(
        &ports,
        &[
            "--conns",
            "20",
            "--depth",
            "4",
            "--requests",
            "50",
            "--batch-usec",
            "500",
        ],
    );
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "requests"), 1000, "{engine:?}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.accepted"), 320, "{engine:?}");
    assert_eq!(u(&stats, "totals.bytes_in"), u(&stats, "totals.bytes_out"));
}

common::per_engine!(batched_waits_on_both_sides_answer_every_request);

/// A redis-server of its own on a free loopback port, ended by PID when dropped; None (the
/// test skips) where redis-server is missing outside CI.
struct Redis {
    child: std::process::Child,
    port: String,
}

impl Redis {
    fn start(extra: &[&str]) -> Option<Redis> {
        if !common::installed("redis-server --version", "redis-server", "redis-server") {
            return None;
        }
        let port = free_ports(1);
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis { child, port };
        for _ in 0..200 {
            if redis.ask("PING").is_ok_and(|r| r == "+PONG\r\n") {
                return Some(redis);
            }
            thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "redis-server not answering PING on {} within 5 s",
            redis.port
        );
    }

    /// One inline command's reply, read in one piece (short replies only).
    fn ask(&self, command: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port.parse::<u16>().unwrap()))?;
        s.write_all(format!("{command}\r\n").as_bytes())?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn load(&self, extra: &[&str]) -> (i32, Value) {
        load(&self.port, &[&["--proto", "redis"], extra].concat())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Our child, not reaped yet: the PID is still its.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn redis_sets_and_gets_are_counted_and_every_reply_checked() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    // 1:3 over 200 commands a connection: 50 SETs, each of a key of the connection's own.
    let (code, r) = redis.load(&["--conns", "20", "--requests", "200", "--ratio", "1:3"]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["proto"], "redis");
    assert_eq!(u(&r, "requests"), 4000, "{r}");
    assert_eq!(u(&r, "redis.sets"), 1000, "{r}");
    assert_eq!(u(&r, "redis.gets"), 3000, "{r}");
    assert_eq!(u(&r, "redis.hits"), 3000, "{r}");
    assert_eq!(u(&r, "size"), 32);
    assert_eq!(redis.ask("DBSIZE").unwrap(), ":1000\r\n");
    assert_eq!(redis.ask("STRLEN memtier-19").unwrap(), ":32\r\n");
    // Pipelined, with depth: batches of 16 in one send each, 2 outstanding.
    let (code, r) = redis.load(&[
        "--conns",
        "10",
        "--pipeline",
        "16",
        "--depth",
        "2",
        "--requests",
        "320",
        "--data-size",
        "3000",
        "--key-prefix",
        "p:",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(u(&r, "requests"), 3200, "{r}");
    assert_eq!(u(&r, "pipeline"), 16);
    assert_eq!(u(&r, "redis.sets") + u(&r, "redis.hits"), 3200, "{r}");
    assert_eq!(redis.ask("STRLEN p:3").unwrap(), ":3000\r\n");
}

#[test]
fn redis_at_a_fixed_rate_with_expiring_keys_has_misses_and_no_faults() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    // Every GET reads one of the keys its connection wrote, most of them over a second ago.
    let (code, r) = redis.load(&[
        "--conns",
        "20",
        "--rate",
        "2000",
        "--duration",
        "3",
        "--ratio",
        "1:1",
        "--key-ttl",
        "1",
    ]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["mode"], "open");
    let requests = u(&r, "requests");
    assert!(
        (5_820..=6_180).contains(&requests),
        "{requests} at 2000/s for 3 s"
    );
    assert_eq!(u(&r, "redis.sets"), u(&r, "redis.gets"), "{r}");
    assert!(u(&r, "redis.misses") > 0 && u(&r, "redis.hits") > 0, "{r}");
    let ttl = redis.ask("TTL memtier-0").unwrap();
    assert!(
        ttl == ":1\r\n" || ttl == ":0\r\n" || ttl == ":-2\r\n",
        "{ttl}"
    );
}

#[test]
fn wrong_and_error_redis_replies_are_faults() {
    // An echo server answers each SET with the SET itself.
    let ports = free_ports(1);
    let server = Server::start(Engine::Uring, &ports, &[]);
    let (code, r) = load(
        &ports,
        &["--proto", "redis", "--conns", "4", "--requests", "3"],
    );
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "errors.redis_unexpected_reply:set"), 4, "{r}");
    assert_eq!(r["errors"].as_object().unwrap().len(), 1, "{r}");
    assert_eq!(u(&r, "requests"), 0);
    server.stop();
    // Over maxmemory, Redis refuses every SET with -OOM.
    let Some(redis) = Redis::start(&["--maxmemory", "1", "--maxmemory-policy", "noeviction"])
    else {
        return;
    };
    let (code, r) = redis.load(&["--conns", "4", "--requests", "3"]);
    assert_eq!(code, 3, "{r}");
    assert_eq!(u(&r, "errors.redis_error:OOM"), 4, "{r}");
    assert_eq!(r["errors"].as_object().unwrap().len(), 1, "{r}");
}
