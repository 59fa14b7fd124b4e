//! `--metrics ADDR:PORT`: `GET /metrics` in the Prometheus text exposition format (0.0.4),
//! served by a thread of its own that only reads the shards' published counters (the
//! shards never wait for it). Each counter is `c1m_NAME_total{engine, shard}`, its doc the
//! HELP line; `c1m_connections` is the gauge of connections held, and each of the shards'
//! gauges of pending work (`c1m_output_owed`, `c1m_waiting_buffers`) is one too. One request per
//! connection, then close.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::stats::Counters;

/// Where the counters come from: each shard's (or worker's) latest, in shard order.
pub type Source = Arc<dyn Fn() -> Vec<Counters> + Send + Sync>;

/// How long a scraper may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request head read.
const MAX_HEAD: usize = 8192;

/// Binds `addr` (a clear error if it cannot) and serves it on a new thread, for as long as
/// the process lives.
pub fn serve(addr: SocketAddr, engine: &'static str, source: Source) -> Result<()> {
    let listener = TcpListener::bind(addr).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => Error::PortInUse(addr),
        _ => Error::io(format!("--metrics {addr}"), e),
    })?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // A scraper that misbehaves costs its own connection, nothing else.
                let _ = answer(stream, engine, &source);
            }
        })
        .map_err(|e| Error::io("spawning the metrics thread", e))?;
    Ok(())
}

fn answer(mut stream: TcpStream, engine: &str, source: &Source) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => ("200 OK", exposition(engine, &source())),
        (Some(b"GET"), _) => ("404 Not Found", "only /metrics is here\n".to_string()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes())
}

/// The exposition of `shards`' counters.
pub fn exposition(engine: &str, shards: &[Counters]) -> String {
    let mut out = String::new();
    let labels = |i: usize| format!("{{engine=\"{engine}\",shard=\"{i}\"}}");
    let names = Counters::default().fields();
    for (f, (name, doc, _)) in names.iter().enumerate() {
        let _ = writeln!(out, "# HELP c1m_{name}_total {doc}");
        let _ = writeln!(out, "# TYPE c1m_{name}_total counter");
        for (i, c) in shards.iter().enumerate() {
            let _ = writeln!(out, "c1m_{name}_total{} {}", labels(i), c.fields()[f].2);
        }
    }
    out.push_str("# HELP c1m_connections Connections open now.\n");
    out.push_str("# TYPE c1m_connections gauge\n");
    for (i, c) in shards.iter().enumerate() {
        let _ = writeln!(out, "c1m_connections{} {}", labels(i), c.active());
    }
    for (g, (name, doc, _)) in Counters::default().gauges().iter().enumerate() {
        let _ = writeln!(out, "# HELP c1m_{name} {doc}");
        let _ = writeln!(out, "# TYPE c1m_{name} gauge");
        for (i, c) in shards.iter().enumerate() {
            let _ = writeln!(out, "c1m_{name}{} {}", labels(i), c.gauges()[g].2);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_help_type_and_a_sample_per_shard() {
        let a = Counters {
            accepted: 5,
            closed: 2,
            ..Counters::default()
        };
        let text = exposition("uring", &[a, Counters::default()]);
        assert!(text.contains("# HELP c1m_accepted_total Connections accepted.\n"));
        assert!(text.contains("# TYPE c1m_accepted_total counter\n"));
        assert!(text.contains("c1m_accepted_total{engine=\"uring\",shard=\"0\"} 5\n"));
        assert!(text.contains("c1m_accepted_total{engine=\"uring\",shard=\"1\"} 0\n"));
        assert!(text.contains("c1m_connections{engine=\"uring\",shard=\"0\"} 3\n"));
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        let series = Counters::default().fields().len() + 1 + Counters::default().gauges().len();
        assert_eq!(samples, series * 2);
    }
}
