//! The host limits that decide how many connections a process can hold: read, never assumed.

use std::fs;
use std::io;

use super::syscall;

/// What the host allows, read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// RLIMIT_NOFILE after raising the soft limit to the hard one.
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// net.core.somaxconn: the cap on every listen backlog.
    pub somaxconn: u64,
    /// net.ipv4.ip_local_port_range.
    pub port_range: (u16, u16),
    /// fs.file-max and the files open now (fs.file-nr).
    pub file_max: u64,
    pub files_open: u64,
    /// net.ipv4.tcp_mem in pages: low, pressure, high. The sysctl is host-wide and shows only
    /// in the initial network namespace: None in any other.
    pub tcp_mem: Option<[u64; 3]>,
    /// Buckets in the established-connection hash table this network namespace uses
    /// (net.ipv4.tcp_ehash_entries, negative there when the namespace shares the host's); None
    /// before Linux 6.1.
    pub ehash_entries: Option<u64>,
    /// MemTotal in bytes.
    pub mem_total: u64,
}

fn read_proc(path: &str) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| io::Error::new(e.kind(), format!("reading {path}: {e}")))
}

fn numbers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn getrlimit_nofile() -> io::Result<libc::rlimit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the pointer is to a live local rlimit, which getrlimit(2) fills.
    unsafe { syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut rl)) }?;
    Ok(rl)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (always allowed), since a ring's
/// fixed-file table is capped at the soft limit when it is registered.
pub fn raise_nofile() -> io::Result<()> {
    let mut rl = getrlimit_nofile()?;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: the pointer is to a live local rlimit, which setrlimit(2) only reads.
        unsafe { syscall!(setrlimit(libc::RLIMIT_NOFILE, &rl)) }?;
    }
    Ok(())
}

impl HostLimits {
    /// Reads the limits; raises the soft fd limit first (see `raise_nofile`).
    pub fn read() -> io::Result<Self> {
        raise_nofile()?;
        let rl = getrlimit_nofile()?;
        let somaxconn = numbers(&read_proc("/proc/sys/net/core/somaxconn")?);
        let range = numbers(&read_proc("/proc/sys/net/ipv4/ip_local_port_range")?);
        let file_max = numbers(&read_proc("/proc/sys/fs/file-max")?);
        let file_nr = numbers(&read_proc("/proc/sys/fs/file-nr")?);
        let tcp_mem = match fs::read_to_string("/proc/sys/net/ipv4/tcp_mem") {
            Ok(text) => Some(numbers(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io::Error::new(e.kind(), format!("reading tcp_mem: {e}"))),
        };
        let ehash_entries = fs::read_to_string("/proc/sys/net/ipv4/tcp_ehash_entries")
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .map(i64::unsigned_abs);
        let meminfo = read_proc("/proc/meminfo")?;
        let mem_kb = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .map(numbers)
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {what}"));
        Ok(HostLimits {
            nofile_soft: rl.rlim_cur,
            nofile_hard: rl.rlim_max,
            somaxconn: *somaxconn.first().ok_or_else(|| bad("somaxconn"))?,
            port_range: match range[..] {
                [lo, hi] => (lo as u16, hi as u16),
                _ => return Err(bad("ip_local_port_range")),
            },
            file_max: *file_max.first().ok_or_else(|| bad("file-max"))?,
            files_open: *file_nr.first().ok_or_else(|| bad("file-nr"))?,
            tcp_mem: match tcp_mem.as_deref() {
                None => None,
                Some(&[a, b, c]) => Some([a, b, c]),
                Some(_) => return Err(bad("tcp_mem")),
            },
            ehash_entries,
            mem_total: mem_kb * 1024,
        })
    }
}

/// What bounds the threads and processes a server may start, read at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLimits {
    /// kernel.threads-max: threads (and processes) the whole host may have.
    pub threads_max: u64,
    /// kernel.pid_max: every thread takes an id below it.
    pub pid_max: u64,
    /// Threads on the host now (/proc/loadavg's fourth field).
    pub tasks_now: u64,
    /// RLIMIT_NPROC, the soft limit on this user's threads; None when it does not apply
    /// (unlimited, or root, whom the kernel does not hold to it).
    pub nproc: Option<u64>,
}

impl TaskLimits {
    pub fn read() -> io::Result<Self> {
        let one = |path: &str| -> io::Result<u64> {
            numbers(&read_proc(path)?).first().copied().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("cannot parse {path}"))
            })
        };
        let loadavg = read_proc("/proc/loadavg")?;
        let tasks_now = loadavg
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split_once('/'))
            .and_then(|(_, total)| total.parse().ok())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "cannot parse /proc/loadavg")
            })?;
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: the pointer is to a live local rlimit, which getrlimit(2) fills.
        unsafe { syscall!(getrlimit(libc::RLIMIT_NPROC, &mut rl)) }?;
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Ok(TaskLimits {
            threads_max: one("/proc/sys/kernel/threads-max")?,
            pid_max: one("/proc/sys/kernel/pid_max")?,
            tasks_now,
            nproc: (!root && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur),
        })
    }

    /// Threads (or processes) that may still be started here.
    pub fn room(&self) -> u64 {
        let host = self
            .threads_max
            .min(self.pid_max)
            .saturating_sub(self.tasks_now);
        match self.nproc {
            Some(n) => host.min(n.saturating_sub(self.tasks_now.min(n))),
            None => host,
        }
    }
}

#[cfg(test)]
impl HostLimits {
    /// The limits of this project's machines (ARCHITECTURE.md, measured facts), for tests of
    /// the pure planning code.
    pub fn measured_here() -> Self {
        HostLimits {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            somaxconn: 4096,
            port_range: (1024, 65535),
            file_max: 2_466_174,
            files_open: 2_000,
            tcp_mem: Some([287_898, 383_866, 575_796]),
            ehash_entries: Some(262_144),
            mem_total: 24 << 30,
        }
    }
}

#[cfg(test)]
impl TaskLimits {
    /// This project's machines: root (no RLIMIT_NPROC), about 200 threads running.
    pub fn measured_here() -> Self {
        TaskLimits {
            threads_max: 192_000,
            pid_max: 32_768,
            tasks_now: 200,
            nproc: None,
        }
    }
}
