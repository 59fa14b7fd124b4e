//! `--proto redis` against both engines, over real sockets, with real Redis tools: redis-cli,
//! redis-benchmark's default run, the redis-py client library; one keyspace across shards;
//! the append-only file under SIGKILL for each fsync policy, a torn last record, a malformed
//! file; --maxmemory and --max-bulk-bytes; the access log's line per command; and the
//! flags' errors.

mod common;
#[path = "common/redis.rs"]
mod redis_cases;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Engine, Server, first_port, free_ports, u};
use redis_cases::Client;

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("c1m-redis-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(engine: Engine, ports: &str, extra: &[&str]) -> Server {
    let mut args = vec!["--proto", "redis"];
    args.extend(extra);
    Server::start(engine, ports, &args)
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn redis_tools() -> bool {
    common::installed(
        "command -v redis-cli && command -v redis-benchmark",
        "redis-cli and redis-benchmark",
        "redis-tools",
    )
}

fn redis_cli_sets_and_gets(engine: Engine) {
    if !redis_tools() {
        return;
    }
    let ports = free_ports(1);
    let port = first_port(&ports);
    let server = start(engine, &ports, &[]);
    assert_eq!(redis_cli(port, &["PING"]), "PONG\n");
    assert_eq!(redis_cli(port, &["SET", "greeting", "hello world"]), "OK\n");
    assert_eq!(redis_cli(port, &["GET", "greeting"]), "hello world\n");
    assert_eq!(redis_cli(port, &["GET", "missing"]), "\n");
    assert!(redis_cli(port, &["INFO", "server"]).contains("redis_version:"));
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.conn_errors"), 0);
}

fn redis_benchmark_default_run_has_no_errors(engine: Engine) {
    if !redis_tools() {
        return;
    }
    let ports = free_ports(1);
    let server = start(engine, &ports, &[]);
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports,
            "-q",
            "-n",
            "2000",
            "-c",
            "20",
        ])
        .output()
        .expect("run redis-benchmark");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // One line per test, each a rate; an error reply would print "ERR" or "error".
    let rates = text.matches("requests per second").count();
    assert!(rates >= 15, "a test is missing: {text}");
    let low = text.to_lowercase();
    assert!(!low.contains("err"), "{text}");
    let stats = server.stop();
    assert_eq!(u(&stats, "totals.conn_errors"), 0);
}

fn redis_py_drives_it(engine: Engine) {
    if !common::installed(
        "/usr/bin/python3 -c 'import redis'",
        "redis-py",
        "python3-redis",
    ) {
        return;
    }
    let ports = free_ports(1);
    let server = start(engine, &ports, &[]);
    let script = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), decode_responses=True)
assert r.ping()
assert r.set("k", "v") and r.get("k") == "v"
assert r.incr("n") == 1 and r.incrby("n", 41) == 42
assert r.rpush("l", "a", "b", "c") == 3 and r.lrange("l", 0, -1) == ["a", "b", "c"]
assert r.hset("h", mapping={"f1": "1", "f2": "2"}) == 2 and r.hgetall("h") == {"f1": "1", "f2": "2"}
assert r.sadd("s", "x", "y") == 2 and r.smembers("s") == {"x", "y"}
assert r.zadd("z", {"a": 1.5, "b": 0.5}) == 2 and r.zrange("z", 0, -1, withscores=True) == [("b", 0.5), ("a", 1.5)]
assert r.set("t", "1", ex=100) and 0 < r.ttl("t") <= 100
assert r.mget("k", "nope") == ["v", None]
p = r.pipeline(transaction=False)
for i in range(100):
    p.set(f"p{i}", i)
assert all(p.execute())
assert r.dbsize() == 107
try:
    r.incr("k")
    raise SystemExit("INCR of a string answered")
except redis.ResponseError as e:
    assert str(e) == "value is not an integer or out of range", e
print("ok")
"#;
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script, &ports])
        .output()
        .expect("run python3");
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop();
}

/// Keys set through connections that landed on every shard are read through all of them.
fn one_keyspace_across_shards(engine: Engine) {
    let ports = free_ports(1);
    let port = first_port(&ports);
    let server = start(engine, &ports, &["--cores", "2"]);
    let mut clients: Vec<Client> = (0..32).map(|_| Client::connect(port)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.call(&["SET", &format!("k{i}"), &format!("v{i}")]),
            "+OK\r\n"
        );
    }
    for c in &mut clients {
        for i in 0..32 {
            let v = format!("v{i}");
            assert_eq!(
                c.call(&["GET", &format!("k{i}")]),
                format!("${}\r\n{v}\r\n", v.len())
            );
        }
        assert_eq!(c.call(&["DBSIZE"]), ":32\r\n");
    }
    drop(clients);
    let stats = server.stop();
    let shards = stats["per_shard"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    for s in shards {
        assert!(u(s, "accepted") > 0, "a shard took no connection: {stats}");
    }
}

/// Each client thread SETs its own keys in order, one at a time; returns, per thread, the
/// keys acknowledged and when.
fn write_until_killed(port: u16, threads: usize, stop: Arc<AtomicBool>) -> Vec<Vec<Instant>> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                let mut c = Client::connect(port);
                while !stop.load(Ordering::Relaxed) {
                    let i = acked.len();
                    let key = format!("w{t}:{i}");
                    if c.send(&["SET", &key, &format!("value-{i}")]).is_err() {
                        break;
                    }
                    match c.reply() {
                        Ok(r) if r == "+OK\r\n" => acked.push(Instant::now()),
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// SIGKILL under writes, then a restart on the same file: every write acknowledged more than
/// `window` before the kill is there (and its value).
fn kill_and_replay(engine: Engine, fsync: &str, window: Duration) {
    let dir = temp_dir(&format!("kill-{fsync}-{engine:?}"));
    let aof = dir.join("appendonly.aof");
    let aof = aof.to_str().unwrap();
    let ports = free_ports(1);
    let port = first_port(&ports);
    let flags = ["--appendonly", aof, "--appendfsync", fsync];
    let mut server = start(engine, &ports, &flags);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || write_until_killed(port, 8, stop))
    };
    thread::sleep(Duration::from_millis(1500));
    server.signal(libc::SIGKILL);
    let killed = Instant::now();
    server.wait(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().unwrap();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 100, "too few writes to tell: {total}");
    let server = start(engine, &ports, &flags);
    let mut c = Client::connect(port);
    let mut lost = 0;
    for (t, keys) in acked.iter().enumerate() {
        for (i, at) in keys.iter().enumerate() {
            let r = c.call(&["GET", &format!("w{t}:{i}")]);
            let v = format!("value-{i}");
            if r != format!("${}\r\n{v}\r\n", v.len()) {
                assert!(
                    killed.duration_since(*at) < window,
                    "{fsync}: w{t}:{i}, acknowledged {:?} before the kill, is lost ({r:?})",
                    killed.duration_since(*at)
                );
                lost += 1;
            }
        }
    }
    eprintln!("{engine:?} {fsync}: {total} writes acknowledged, {lost} lost");
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn always_loses_no_acknowledged_write(engine: Engine) {
    kill_and_replay(engine, "always", Duration::ZERO);
}

fn everysec_loses_at_most_two_seconds(engine: Engine) {
    kill_and_replay(engine, "everysec", Duration::from_secs(2));
}

/// A file whose last record is cut short (a crash mid-write): the whole records are
/// replayed, the torn one is cut off, and the server says so.
fn a_torn_last_record_is_cut_and_said(engine: Engine) {
    let dir = temp_dir(&format!("torn-{engine:?}"));
    let aof = dir.join("appendonly.aof");
    let whole =
        "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n";
    std::fs::write(&aof, format!("{whole}*3\r\n$3\r\nSET\r\n$1\r\nc\r\n$1")).unwrap();
    let ports = free_ports(1);
    let server = start(
        engine,
        &ports,
        &["--appendonly", aof.to_str().unwrap(), "--appendfsync", "no"],
    );
    let said = server.stderr_line("torn last record", Duration::from_secs(5));
    assert!(said.is_some_and(|l| l.contains("as redis-check-aof --fix would")));
    let mut c = Client::connect(first_port(&ports));
    assert_eq!(c.call(&["GET", "a"]), "$1\r\n1\r\n");
    assert_eq!(c.call(&["GET", "b"]), "$1\r\n2\r\n");
    assert_eq!(c.call(&["GET", "c"]), "$-1\r\n");
    drop(c);
    server.stop();
    assert_eq!(std::fs::read_to_string(&aof).unwrap(), whole);
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_to_exit(engine: Engine, args: &[&str]) -> (i32, String) {
    let out = Command::new(engine.binary())
        .args(args)
        .output()
        .expect("run the server");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A record that is not RESP in the middle of the file is refused at start, by its place.
fn a_malformed_file_is_refused(engine: Engine) {
    let dir = temp_dir(&format!("bad-{engine:?}"));
    let aof = dir.join("appendonly.aof");
    std::fs::write(&aof, "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n*x\r\n").unwrap();
    let ports = free_ports(1);
    let (code, err) = run_to_exit(
        engine,
        &[
            "--proto",
            "redis",
            "--ports",
            &ports,
            "--host",
            "127.0.0.1",
            "--appendonly",
            aof.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("malformed record at byte 27"), "{err}");
    assert!(err.contains("redis-check-aof --fix"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn redis_flags_need_redis(engine: Engine) {
    let (code, err) = run_to_exit(engine, &["--appendonly", "/tmp/x.aof"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("are for --proto redis"), "{err}");
}

/// `everysec` fsyncs about once a second while there are writes, and the summary counts
/// each (the Reactor's fsyncs are on a thread of their own).
fn everysec_fsyncs_are_counted(engine: Engine) {
    let dir = temp_dir(&format!("everysec-{engine:?}"));
    let aof = dir.join("appendonly.aof");
    let ports = free_ports(1);
    let server = start(
        engine,
        &ports,
        &[
            "--appendonly",
            aof.to_str().unwrap(),
            "--appendfsync",
            "everysec",
        ],
    );
    let mut c = Client::connect(first_port(&ports));
    let until = Instant::now() + Duration::from_millis(2500);
    let mut n = 0;
    while Instant::now() < until {
        assert_eq!(c.call(&["SET", "k", &n.to_string()]), "+OK\r\n");
        n += 1;
        thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    let stats = server.stop();
    let syncs = stats["totals"]["aof_syncs"].as_u64().unwrap();
    assert!(
        (2..=4).contains(&syncs),
        "{syncs} fsyncs in 2.5 s of writes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One line per command: `127.0.0.1 - - [time] "SET k v" OK 5 0.000`.
fn the_access_log_has_a_line_per_command(engine: Engine) {
    let dir = temp_dir(&format!("log-{engine:?}"));
    let log = dir.join("access.log");
    let ports = free_ports(1);
    let server = start(engine, &ports, &["--access-log", log.to_str().unwrap()]);
    let mut c = Client::connect(first_port(&ports));
    assert_eq!(c.call(&["SET", "k", "a\"b"]), "+OK\r\n");
    assert_eq!(c.call(&["GET", "k"]), "$3\r\na\"b\r\n");
    assert!(c.call(&["NOSUCH", "x"]).starts_with("-ERR unknown command"));
    drop(c);
    server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let fields = |l: &str| -> (String, String) {
        let (peer, rest) = l.split_once(" - - [").unwrap();
        let (_, rest) = rest.split_once("] ").unwrap();
        (
            peer.to_string(),
            rest.rsplit_once(' ').unwrap().0.to_string(),
        )
    };
    assert_eq!(
        fields(lines[0]),
        ("127.0.0.1".into(), r#""SET k a\x22b" OK 5"#.into())
    );
    assert_eq!(
        fields(lines[1]),
        ("127.0.0.1".into(), r#""GET k" OK 9"#.into())
    );
    assert!(
        fields(lines[2]).1.starts_with(r#""NOSUCH x" ERR "#),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--maxmemory`: over it, a SET gets Redis's OOM error; reads and deletes still work.
fn maxmemory_refuses_writes_with_redis_error(engine: Engine) {
    let ports = free_ports(1);
    let server = start(engine, &ports, &["--maxmemory", "4096"]);
    let mut c = Client::connect(first_port(&ports));
    let big = "x".repeat(8192);
    assert_eq!(c.call(&["SET", "a", &big]), "+OK\r\n");
    assert_eq!(
        c.call(&["SET", "b", "1"]),
        "-OOM command not allowed when used memory > 'maxmemory'.\r\n"
    );
    assert_eq!(c.call(&["STRLEN", "a"]), ":8192\r\n");
    assert_eq!(c.call(&["DEL", "a"]), ":1\r\n");
    assert_eq!(c.call(&["SET", "b", "1"]), "+OK\r\n");
    drop(c);
    server.stop();
}

/// `--max-bulk-bytes`: a bulk over it is Redis's protocol error, and the connection closes.
fn a_bulk_over_the_limit_is_a_protocol_error(engine: Engine) {
    let ports = free_ports(1);
    let server = start(engine, &ports, &["--max-bulk-bytes", "100"]);
    let mut c = Client::connect(first_port(&ports));
    assert_eq!(c.call(&["SET", "k", &"y".repeat(100)]), "+OK\r\n");
    c.send(&["SET", "k", &"y".repeat(101)]).unwrap();
    assert_eq!(
        c.reply().unwrap(),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    assert!(
        c.reply().is_err(),
        "the connection closes after a protocol error"
    );
    drop(c);
    server.stop();
}

/// Keys past their TTL that nobody reads go by the active sweep (DBSIZE counts every key
/// held, expired or not, as Redis's does).
fn active_expiry_removes_keys_nobody_reads(engine: Engine) {
    let ports = free_ports(1);
    let server = start(engine, &ports, &[]);
    let mut c = Client::connect(first_port(&ports));
    for i in 0..100 {
        assert_eq!(
            c.call(&["SET", &format!("t{i}"), "v", "PX", "50"]),
            "+OK\r\n"
        );
    }
    assert_eq!(c.call(&["SET", "stays", "v"]), "+OK\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.call(&["DBSIZE"]) != ":1\r\n" {
        assert!(
            Instant::now() < deadline,
            "expired keys still held after 5 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    drop(c);
    server.stop();
}

common::per_engine!(
    active_expiry_removes_keys_nobody_reads,
    maxmemory_refuses_writes_with_redis_error,
    a_bulk_over_the_limit_is_a_protocol_error,
    redis_cli_sets_and_gets,
    redis_benchmark_default_run_has_no_errors,
    redis_py_drives_it,
    one_keyspace_across_shards,
    always_loses_no_acknowledged_write,
    everysec_loses_at_most_two_seconds,
    everysec_fsyncs_are_counted,
    a_torn_last_record_is_cut_and_said,
    a_malformed_file_is_refused,
    redis_flags_need_redis,
    the_access_log_has_a_line_per_command,
);

/// Where the Reactor needs worker processes, Redis's one keyspace is held by one more
/// process: the plan says so (`tests/redis_workers.rs` runs it).
#[test]
fn epoll_workers_for_redis_plan_a_keyspace_owner() {
    let out = Command::new(Engine::Epoll.binary())
        .args([
            "--proto",
            "redis",
            "--max-conns",
            "100000",
            "--check-config",
        ])
        .output()
        .expect("run the server");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains(" worker processes of one shard each")
            && text.contains("and a keyspace owner"),
        "{text}"
    );
}
