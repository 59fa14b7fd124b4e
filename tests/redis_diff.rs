//! The Redis protocol against real Redis: every case of `common/redis.rs` runs on
//! redis-server (7.0, started here on a free port) and on `Session::on_input` with a fresh
//! keyspace, and the replies must match (byte for byte where Redis's are defined). The
//! deterministic cases are also fed split at every byte.

mod common;
#[path = "common/redis.rs"]
mod redis_cases;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use c1m::proto::redis::{Config, Env, Keyspace, Limits, Session};
use redis_cases::{Case, Check, Redis, cases, compare_case, run_tcp};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Each step's replies from our Session, each step fed in the pieces `cut` makes of it.
fn run_ours(ks: &Keyspace, case: &Case, cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<Vec<u8>> {
    let mut session = Session::new();
    let mut all = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let env = Env {
            keyspace: ks,
            limits: Limits::default(),
            now_ms: now_ms(),
            now: Instant::now(),
        };
        let mut out = Vec::new();
        let (mut answers, mut close) = (0, false);
        for part in cut(&step.send) {
            if close {
                break; // an engine reads no more
            }
            let o = session.on_input(part, &env, &mut out, None);
            answers += o.answers;
            close |= o.close;
        }
        assert_eq!(
            answers as usize, step.replies,
            "{}: step {i}: answers",
            case.name
        );
        let last = i + 1 == case.steps.len();
        assert_eq!(close, last && case.closes, "{}: step {i}: close", case.name);
        all.push(out);
        std::thread::sleep(Duration::from_millis(step.sleep_ms));
    }
    all
}

#[test]
fn replies_match_redis() {
    if !common::installed("redis-server --version", "redis-server", "redis-server") {
        return;
    }
    let redis = Redis::start();
    let ks = Keyspace::new(Config::default());
    let (mut bad, mut replies, mut splits) = (Vec::new(), 0, 0);
    for case in cases() {
        replies += case.steps.iter().map(|s| s.replies).sum::<usize>();
        let theirs = run_tcp((Ipv4Addr::LOCALHOST, redis.port).into(), &case);
        let ours = run_ours(&ks, &case, |b| vec![b]);
        bad.extend(compare_case(&case, &ours, &theirs));
        // The exact cases again, each step split in two at every byte.
        let exact = case
            .steps
            .iter()
            .all(|s| s.check == Check::Exact && s.sleep_ms == 0);
        let small = case.steps.iter().all(|s| s.send.len() <= 4096);
        if exact && small {
            let longest = case.steps.iter().map(|s| s.send.len()).max().unwrap_or(0);
            for at in 0..=longest {
                let ks = Keyspace::new(Config::default());
                let split = run_ours(&ks, &case, |b| {
                    let (x, y) = b.split_at(at.min(b.len()));
                    vec![x, y]
                });
                splits += 1;
                if split != ours {
                    bad.push(format!("{}: split at {at} changed the replies", case.name));
                    break;
                }
            }
        }
    }
    eprintln!("compared {replies} replies with Redis's, and {splits} splits");
    assert!(
        bad.is_empty(),
        "{} differences:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The same cases over TCP against each engine (started with two shards, so that cases
/// land on both): the replies must be Redis's, as at library level.
fn engine_replies_match_redis(engine: common::Engine) {
    if !common::installed("redis-server --version", "redis-server", "redis-server") {
        return;
    }
    let redis = Redis::start();
    let ports = common::free_ports(1);
    let server = common::Server::start(engine, &ports, &["--proto", "redis", "--cores", "2"]);
    let ours_at = (Ipv4Addr::LOCALHOST, common::first_port(&ports)).into();
    let mut bad = Vec::new();
    for case in cases() {
        let theirs = run_tcp((Ipv4Addr::LOCALHOST, redis.port).into(), &case);
        let ours = run_tcp(ours_at, &case);
        bad.extend(compare_case(&case, &ours, &theirs));
    }
    server.stop();
    assert!(
        bad.is_empty(),
        "{engine:?}: {} differences:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

common::per_engine!(engine_replies_match_redis);
