//! The access log (`--access-log FILE`): the lines a shard owes the file, the buffer they wait
//! in, and the file, which SIGUSR1 reopens (log rotation, nginx's convention: `mv access.log
//! access.log.1; kill -USR1 PID`). HTTP logs one line per request answered, in nginx's
//! `combined` format plus `$request_time` (`$remote_addr - $remote_user [$time_local]
//! "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time`,
//! escaped as nginx does), so tools that read nginx's logs read it; echo one line per
//! connection at its close, in nginx stream's `basic` format (`$remote_addr [$time_local]
//! $protocol $status $bytes_sent $bytes_received $session_time`). Times are local, as nginx
//! writes them.
//!
//! How a batch reaches the file is each engine's: the Proactor hands it to its ring (one
//! write in flight per shard, the next batch gathering behind it), so its thread never waits
//! for the disk; the Reactor writes it with write(2) when the buffer fills and at least once
//! a second, as nginx does, and waits for the disk there. Both keep every line: a shard whose
//! buffer is over `--access-log-buffer` stops reading (the Proactor), or writes it out at once
//! (the Reactor).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proto::http::Logged;
use crate::proto::{Done, digits, redis};
use crate::stats::Counters;
use crate::sys;

/// The log file of a server process, shared by its shards; `reopen` swaps in a new one.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Arc<OwnedFd>>,
    /// One more at each reopen: a shard looks at it once per loop turn.
    version: AtomicU64,
    /// A write error was said on stderr (by any shard): the next ones are only counted.
    said: AtomicBool,
}

impl LogFile {
    /// Opens `path` to append to (created if absent).
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(Arc::new(sys::open_append(path)?)),
            version: AtomicU64::new(0),
            said: AtomicBool::new(false),
        })
    }

    /// Opens the path again (after a rename, a new file): the lines written from now on go
    /// there. On error the old file stays in use.
    pub fn reopen(&self) -> io::Result<()> {
        let fresh = Arc::new(sys::open_append(&self.path)?);
        if let Ok(mut f) = self.file.lock() {
            *f = fresh;
        }
        self.version.fetch_add(1, Ordering::Release);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Option<Arc<OwnedFd>> {
        self.file.lock().ok().map(|f| f.clone())
    }
}

/// `[$time_local]` of the current second, e.g. `01/Dec/2026:12:40:00 +0000`.
#[derive(Debug)]
struct LocalTime {
    second: i64,
    text: String,
}

impl LocalTime {
    fn at(&mut self, now: SystemTime) -> &str {
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = format_local(second);
        }
        &self.text
    }
}

fn format_local(unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (tm, offset) = sys::local_time(unix);
    let sign = if offset < 0 { '-' } else { '+' };
    let off = offset.unsigned_abs() / 60;
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} {sign}{:02}{:02}",
        tm.tm_mday,
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        off / 60,
        off % 60,
    )
}

/// Appends `d` in seconds with millisecond resolution, as nginx's `$request_time` and
/// `$session_time`.
fn push_seconds(out: &mut Vec<u8>, d: Duration) {
    digits::push(out, d.as_secs());
    let ms = d.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// Appends `$remote_addr`: the peer's address, `-` if unknown.
fn push_addr(out: &mut Vec<u8>, peer: Option<SocketAddr>) {
    use std::io::Write as _;
    match peer.map(|p| p.ip()) {
        Some(IpAddr::V4(ip)) => {
            for (i, o) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                digits::push(out, o.into());
            }
        }
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
}

/// Appends `field` as nginx's default log escaping does: `"`, `\` and bytes outside
/// printable ASCII as `\xHH`.
fn escape(field: &[u8], out: &mut Vec<u8>) {
    for &b in field {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(format!("\\x{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
}

/// `escape`, or `-` for a field that is absent.
fn escape_or_dash(field: &[u8], out: &mut Vec<u8>) {
    if field.is_empty() {
        out.push(b'-');
    } else {
        escape(field, out);
    }
}

/// What the log needs of one connection, kept by its shard while logging.
#[derive(Debug, Clone, Copy)]
pub struct ConnLog {
    /// None until known (the Proactor learns it just after the accept).
    pub peer: Option<SocketAddr>,
    pub since: Instant,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl ConnLog {
    pub fn new(peer: Option<SocketAddr>, since: Instant) -> ConnLog {
        ConnLog {
            peer,
            since,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// The longest a line waits in a shard's buffer before it is written (nginx's `flush=`).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One shard's lines not yet handed to the file, and the file they go to.
#[derive(Debug)]
pub struct Pending {
    log: Arc<LogFile>,
    /// The file batches go to now, and the `log.version` it is.
    file: Option<Arc<OwnedFd>>,
    seen: u64,
    buf: Vec<u8>,
    /// Lines in `buf`, and in the batch being written.
    lines: u64,
    writing: u64,
    /// Above this many bytes the shard stops taking more (`full`).
    cap: usize,
    /// When the oldest line in `buf` was made.
    oldest: Option<Instant>,
    /// `--access-log-fsync`, and when the file was last synced.
    fsync: Option<Duration>,
    synced: Instant,
    /// Bytes were written since the last sync.
    unsynced: bool,
    time: LocalTime,
}

impl Pending {
    pub fn new(log: Arc<LogFile>, cap: usize, fsync: Option<Duration>) -> Pending {
        let file = log.current();
        let seen = log.version.load(Ordering::Acquire);
        Pending {
            log,
            file,
            seen,
            buf: Vec::with_capacity(cap.min(64 * 1024)),
            lines: 0,
            writing: 0,
            cap,
            oldest: None,
            fsync,
            synced: Instant::now(),
            unsynced: false,
            time: LocalTime {
                second: 0,
                text: String::new(),
            },
        }
    }

    /// At `--access-log-buffer`: stop taking more until a batch is written (an empty buffer
    /// never is, so 0 means "write each line at once").
    pub fn full(&self) -> bool {
        !self.buf.is_empty() && self.buf.len() >= self.cap
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the buffer is due to be written: it holds `at` bytes, or its oldest line is
    /// `FLUSH_EVERY` old.
    pub fn due(&self, at: usize, now: Instant) -> bool {
        !self.buf.is_empty()
            && (self.buf.len() >= at || self.oldest.is_some_and(|t| now >= t + FLUSH_EVERY))
    }

    /// How long until the oldest line is `FLUSH_EVERY` old (None: nothing buffered).
    pub fn due_in(&self, now: Instant) -> Option<Duration> {
        self.oldest
            .map(|t| (t + FLUSH_EVERY).saturating_duration_since(now))
    }

    /// The bound the buffer is kept under (`--access-log-buffer`).
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// An echo connection closed: its line (nginx stream's `basic` format; the session ended,
    /// so its status is 200).
    pub fn echo(&mut self, c: &ConnLog, now: Instant, counters: &mut Counters) {
        self.begin_line();
        let time = self.time.at(SystemTime::now());
        let buf = &mut self.buf;
        push_addr(buf, c.peer);
        buf.extend_from_slice(b" [");
        buf.extend_from_slice(time.as_bytes());
        buf.extend_from_slice(b"] TCP 200 ");
        digits::push(buf, c.bytes_out);
        buf.push(b' ');
        digits::push(buf, c.bytes_in);
        buf.push(b' ');
        push_seconds(buf, now.saturating_duration_since(c.since));
        buf.push(b'\n');
        self.end_line(counters);
    }

    /// An HTTP request was answered: its line, nginx's `combined` format plus
    /// `$request_time`.
    fn http(&mut self, peer: Option<SocketAddr>, l: &Logged, counters: &mut Counters) {
        let buf = self.begin_request(peer);
        escape(&l.line, buf);
        buf.extend_from_slice(b"\" ");
        digits::push(buf, l.status.into());
        buf.push(b' ');
        digits::push(buf, l.body_bytes.into());
        buf.extend_from_slice(b" \"");
        escape_or_dash(&l.referer, buf);
        buf.extend_from_slice(b"\" \"");
        escape_or_dash(&l.user_agent, buf);
        buf.extend_from_slice(b"\" ");
        push_seconds(buf, l.took);
        buf.push(b'\n');
        self.end_line(counters);
    }

    /// A Redis command was answered: `$remote_addr - - [$time_local] "$command" $reply
    /// $reply_bytes $request_time`, the command's words (at most `redis::LOG_ARGS`, each
    /// cut at `redis::LOG_ARG_MAX`, `...` if more) escaped as nginx escapes, `$reply` `OK`
    /// or `ERR` (an error reply).
    fn redis(&mut self, peer: Option<SocketAddr>, l: &redis::Logged, counters: &mut Counters) {
        let buf = self.begin_request(peer);
        for (i, a) in l.args.iter().enumerate() {
            if i > 0 {
                buf.push(b' ');
            }
            escape(a, buf);
        }
        if l.more {
            buf.extend_from_slice(b" ...");
        }
        buf.extend_from_slice(if l.error { b"\" ERR " } else { b"\" OK " });
        digits::push(buf, l.reply_bytes.into());
        buf.push(b' ');
        push_seconds(buf, l.took);
        buf.push(b'\n');
        self.end_line(counters);
    }

    /// A connection's answered requests, `done`, drained: a line each.
    pub fn answered(&mut self, peer: Option<SocketAddr>, done: Done<'_>, counters: &mut Counters) {
        match done {
            Done::Http(done) => {
                for l in done.drain(..) {
                    self.http(peer, &l, counters);
                }
            }
            Done::Redis(done) => {
                for l in done.drain(..) {
                    self.redis(peer, &l, counters);
                }
            }
        }
    }

    /// Begins a request's line, `$remote_addr - - [$time_local] "`, for the request to follow.
    fn begin_request(&mut self, peer: Option<SocketAddr>) -> &mut Vec<u8> {
        self.begin_line();
        let time = self.time.at(SystemTime::now());
        let buf = &mut self.buf;
        push_addr(buf, peer);
        buf.extend_from_slice(b" - - [");
        buf.extend_from_slice(time.as_bytes());
        buf.extend_from_slice(b"] \"");
        buf
    }

    fn begin_line(&mut self) {
        if self.buf.is_empty() {
            self.oldest = Some(Instant::now());
        }
    }

    fn end_line(&mut self, counters: &mut Counters) {
        self.lines += 1;
        counters.log_lines += 1;
        counters.log_pending_max = counters.log_pending_max.max(self.lines + self.writing);
    }

    /// The file the next batch goes to: the one a SIGUSR1 reopened, once it has.
    pub fn file(&mut self) -> Option<Arc<OwnedFd>> {
        let v = self.log.version.load(Ordering::Acquire);
        if v != self.seen {
            self.seen = v;
            self.file = self.log.current();
        }
        self.file.clone()
    }

    /// Takes what is buffered as the next batch to write (`spare` becomes the buffer).
    pub fn take(&mut self, spare: Vec<u8>) -> Vec<u8> {
        self.writing = self.lines;
        self.lines = 0;
        self.oldest = None;
        let mut spare = spare;
        spare.clear();
        std::mem::replace(&mut self.buf, spare)
    }

    /// The batch was written whole (`Ok`), or failed: counted, said once on stderr, and its
    /// lines are lost (serving goes on).
    pub fn written(&mut self, result: io::Result<usize>, counters: &mut Counters) {
        match result {
            Ok(n) => {
                counters.log_writes += 1;
                counters.log_bytes += n as u64;
                self.unsynced = true;
            }
            Err(e) => self.failed("write", e, counters),
        }
        self.writing = 0;
    }

    fn failed(&mut self, what: &str, e: io::Error, counters: &mut Counters) {
        counters.log_errors += 1;
        if !self.log.said.swap(true, Ordering::Relaxed) {
            crate::server::say(format!(
                "access log {}: {what} failed: {e}; its lines are lost while writes fail \
                 (counted as log_errors), serving goes on",
                self.log.path().display()
            ));
        }
    }

    /// Whether the file is due an fdatasync (`--access-log-fsync`): written to since the
    /// last, which was that long ago, or (`force`) the shard is ending.
    pub fn sync_due(&self, now: Instant, force: bool) -> bool {
        self.unsynced
            && self
                .fsync
                .is_some_and(|every| force || now >= self.synced + every)
    }

    /// An fdatasync completed (or failed: counted and said as a write error is).
    pub fn synced(&mut self, result: io::Result<()>, now: Instant, counters: &mut Counters) {
        self.synced = now;
        self.unsynced = false;
        counters.log_syncs += 1;
        if let Err(e) = result {
            self.failed("fdatasync", e, counters);
        }
    }

    /// A part of the batch was written; the rest goes next.
    pub fn wrote_part(&mut self, n: usize, counters: &mut Counters) {
        counters.log_writes += 1;
        counters.log_bytes += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_is_nginx_time_local() {
        // 2026-12-01 12:40:00 UTC; the test process's zone is whatever TZ says.
        let text = format_local(1_796_128_800);
        let (day, rest) = text.split_once('/').unwrap();
        assert_eq!(day.len(), 2, "{text}");
        assert!(
            rest.starts_with("Dec/2026:") || rest.starts_with("Nov/2026:"),
            "{text}"
        );
        let zone = text.rsplit_once(' ').unwrap().1;
        assert!(
            zone.len() == 5 && (zone.starts_with('+') || zone.starts_with('-')),
            "{text}"
        );
        let secs = |d| {
            let mut out = Vec::new();
            push_seconds(&mut out, d);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(secs(Duration::from_millis(1_234)), "1.234");
        assert_eq!(secs(Duration::from_micros(999)), "0.000");
        assert_eq!(secs(Duration::from_millis(60_050)), "60.050");
        let addr = |a: Option<&str>| {
            let mut out = Vec::new();
            push_addr(&mut out, a.map(|a| a.parse().unwrap()));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(addr(Some("127.0.0.1:80")), "127.0.0.1");
        assert_eq!(addr(Some("10.200.3.255:1")), "10.200.3.255");
        assert_eq!(addr(Some("[::1]:80")), "::1");
        assert_eq!(addr(None), "-");
    }
}
