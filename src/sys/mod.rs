//! Raw system calls behind one `syscall!` helper: sockets and their options, CPU affinity,
//! eventfd, signals. Nearly all of the crate's `unsafe` outside the io_uring modules is here.

pub mod aio;
pub mod limits;
pub mod notify;
pub mod process;
pub mod select;
pub mod sigio;
pub mod user;

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Calls a libc function and turns a `-1` return into the thread's `errno` as `io::Error`.
/// The call is unsafe and the macro does not hide it: each use is written
/// `unsafe { syscall!(f(..)) }` under a `// SAFETY:` comment saying why its arguments meet
/// `f`'s contract, where `clippy::undocumented_unsafe_blocks` checks that there is one.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        let res = libc::$fn($($arg),*);
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// The largest backlog to pass to listen(2); the kernel clamps it to net.core.somaxconn.
pub const LISTEN_BACKLOG: u32 = 65535;

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the value pointer is to a live local i32 and the length is its size;
    // setsockopt(2) only reads it.
    unsafe {
        syscall!(setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t
        ))
    }
    .map(drop)
}

/// IP_BIND_ADDRESS_NO_PORT (Linux 4.2+) on socket `fd`: a later bind() sets only the source
/// address and connect() picks the port for the whole 4-tuple, as with no bind at all.
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf(3) reads a constant of the system and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).unwrap_or(100)
}

/// A socket address in the kernel's layout, of either family: what bind(2) and connect(2)
/// read through `as_ptr` and `len`.
#[derive(Clone, Copy)]
pub enum SockAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl SockAddr {
    pub fn new(addr: SocketAddr) -> SockAddr {
        match addr {
            SocketAddr::V4(a) => SockAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => SockAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    /// AF_INET or AF_INET6: the family of the socket that binds or connects to it.
    pub fn family(&self) -> i32 {
        match self {
            SockAddr::V4(_) => libc::AF_INET,
            SockAddr::V6(_) => libc::AF_INET6,
        }
    }

    /// Valid as long as `self` is, and not moved.
    pub fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            SockAddr::V4(sa) => (sa as *const libc::sockaddr_in).cast(),
            SockAddr::V6(sa) => (sa as *const libc::sockaddr_in6).cast(),
        }
    }

    /// The size of the struct `as_ptr` points to.
    pub fn socklen(&self) -> libc::socklen_t {
        let size = match self {
            SockAddr::V4(_) => mem::size_of::<libc::sockaddr_in>(),
            SockAddr::V6(_) => mem::size_of::<libc::sockaddr_in6>(),
        };
        size as libc::socklen_t
    }
}

/// A TCP socket of `addr`'s family. An IPv6 one takes IPv4 too (IPV6_V6ONLY off, so that
/// `::` is dual-stack whatever net.ipv6.bindv6only says; its IPv4 peers are IPv4-mapped).
fn tcp_socket(addr: &SocketAddr, flags: i32) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) takes no pointers: integers in, a new fd or -1 out.
    let fd = unsafe {
        syscall!(socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0
        ))
    }?;
    // SAFETY: socket(2) just returned this fd and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    if family == libc::AF_INET6 {
        setsockopt_int(sock.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    Ok(sock)
}

fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let sa = SockAddr::new(*addr);
    // SAFETY: the address pointer is to a live local sockaddr of the length given;
    // bind(2) only reads it.
    unsafe { syscall!(bind(fd, sa.as_ptr(), sa.socklen())) }.map(drop)
}

/// A listening TCP socket for one shard: SO_REUSEADDR (the server ports lie inside the
/// ephemeral range), SO_REUSEPORT (one listener per shard per port, the kernel spreads
/// connections over them), TCP_NODELAY (inherited by accepted sockets), and `backlog`.
/// `nonblocking` for epoll; io_uring listeners stay blocking (io_uring arms its own poll).
pub fn reuseport_listener(
    addr: SocketAddr,
    nonblocking: bool,
    backlog: u32,
) -> io::Result<OwnedFd> {
    let sock = tcp_socket(&addr, if nonblocking { libc::SOCK_NONBLOCK } else { 0 })?;
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    bind(fd, &addr)?;
    // SAFETY: listen(2) takes no pointers: an fd and a backlog.
    unsafe { syscall!(listen(fd, backlog.min(LISTEN_BACKLOG) as i32)) }?;
    Ok(sock)
}

/// Whether another socket already listens on `addr`. SO_REUSEPORT would let a second server
/// of the same user bind silently and share the port, so every port is probed first with a
/// socket that does not set it: only a free port binds.
pub fn port_in_use(addr: SocketAddr) -> io::Result<bool> {
    let sock = tcp_socket(&addr, 0)?;
    setsockopt_int(sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    match bind(sock.as_raw_fd(), &addr) {
        Ok(()) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Ok(true),
        Err(e) => Err(e),
    }
}

/// The CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: the mask pointer is to a live local cpu_set_t and the size is its size, so the
    // kernel writes no more than it holds.
    unsafe {
        syscall!(sched_getaffinity(
            0,
            mem::size_of::<libc::cpu_set_t>(),
            &mut set
        ))
    }?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the bit count of `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    set_cpus(&[cpu])
}

/// Sets the calling thread's nice value (threads it starts later inherit it); raising
/// priority (below 0) needs CAP_SYS_NICE.
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: setpriority(2) takes no pointers; PRIO_PROCESS with 0 is the calling thread.
    unsafe { syscall!(setpriority(libc::PRIO_PROCESS, 0, nice)) }.map(|_| ())
}

/// A non-blocking eventfd, used to wake a shard blocked in io_uring_enter.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers: a count and flags in, a new fd or -1 out.
    let fd = unsafe { syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)) }?;
    // SAFETY: eventfd(2) just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter, waking whatever reads it.
pub fn eventfd_wake(fd: RawFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: the buffer pointer is to a live local u64 and the length is its 8 bytes (what
    // eventfd(2) requires); write(2) only reads them.
    unsafe { syscall!(write(fd, (&one as *const u64).cast(), 8)) }.map(drop)
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; SIGINT, SIGTERM, SIGHUP and SIGUSR1 are valid
    // signal numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
    }
    set
}

/// Blocks SIGINT, SIGTERM, SIGHUP (the reload) and SIGUSR1 (the access log's reopen) in the
/// calling thread (and in every thread it spawns after),
/// so that they are taken only by `wait_stop_signal`; ignores SIGPIPE, since a peer that
/// resets must show up as an error result, not end the process.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

/// Waits up to `timeout` for SIGINT, SIGTERM, SIGHUP or SIGUSR1 (blocked beforehand by
/// `block_stop_signals`); returns the signal number, or None on timeout.
pub fn wait_stop_signal(timeout: Duration) -> io::Result<Option<i32>> {
    let set = stop_signals();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set and timeout pointers are to a live local sigset_t (initialised by
    // `stop_signals`) and timespec, which sigtimedwait(2) only reads; a null siginfo is allowed.
    match unsafe { syscall!(sigtimedwait(&set, std::ptr::null_mut(), &ts)) } {
        Ok(sig) => Ok(Some(sig)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// CPU time used, user and system, in seconds: by this process so far, or (`children`) by
/// the children it has waited for.
pub fn cpu_times(children: bool) -> (f64, f64) {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: rusage is plain data; all-zero is valid and getrusage overwrites it.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: the pointer is to a live local rusage, which getrusage(2) fills.
    if unsafe { syscall!(getrusage(who, &mut ru)) }.is_err() {
        return (0.0, 0.0);
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// A new epoll instance.
pub fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1(2) takes no pointers: flags in, a new fd or -1 out.
    let fd = unsafe { syscall!(epoll_create1(libc::EPOLL_CLOEXEC)) }?;
    // SAFETY: epoll_create1(2) just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers `fd` with `events`, reported with `token`.
pub fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: the event pointer is to a live local epoll_event, which epoll_ctl(2) only reads
    // (the kernel keeps a copy, not the pointer).
    unsafe { syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev)) }.map(drop)
}

/// Changes the events (and token) `fd` is registered with; re-arms an EPOLLONESHOT one.
pub fn epoll_modify(epfd: RawFd, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: the event pointer is to a live local epoll_event, which epoll_ctl(2) only reads.
    unsafe { syscall!(epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev)) }.map(drop)
}

/// Removes `fd` from the epoll set (closing it does too, once no other fd refers to its file).
pub fn epoll_delete(epfd: RawFd, fd: RawFd) -> io::Result<()> {
    // SAFETY: a null event pointer is allowed for EPOLL_CTL_DEL (Linux 2.6.9+).
    unsafe {
        syscall!(epoll_ctl(
            epfd,
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut()
        ))
    }
    .map(drop)
}

/// Waits up to `timeout_ms` (-1: forever) for events; returns how many were written.
/// EINTR counts as no events.
pub fn epoll_wait(
    epfd: RawFd,
    events: &mut [libc::epoll_event],
    timeout_ms: i32,
) -> io::Result<usize> {
    let max = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: the pointer is to the caller's live, writable slice and `max` is at most its
    // length, so the kernel writes only inside it.
    match unsafe { syscall!(epoll_wait(epfd, events.as_mut_ptr(), max, timeout_ms)) } {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
        Err(e) => Err(e),
    }
}

/// The calling thread's kernel id.
pub fn gettid() -> u32 {
    // SAFETY: gettid(2) takes nothing and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// Accepts one connection on `listener`, blocking unless the listener is non-blocking; the
/// socket is blocking.
pub fn accept(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address and length pointers are allowed (the peer's address is not
    // wanted); nothing else is a pointer.
    let fd = unsafe {
        syscall!(accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC
        ))
    }?;
    // SAFETY: accept4(2) just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// shutdown(2) of the read side: a read blocked on the socket (in any thread) returns 0, and
/// so does every later one; on a listener, a blocked accept returns EINVAL.
pub fn shutdown_read(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) takes no pointers: an fd and a flag.
    unsafe { syscall!(shutdown(fd, libc::SHUT_RD)) }.map(drop)
}

/// Restricts the calling thread (and the threads and processes it starts after) to `cpus`.
pub fn set_cpus(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE (checked above), the bit count of `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: the mask pointer is to a live local cpu_set_t and the size is its size;
    // sched_setaffinity(2) only reads it.
    unsafe {
        syscall!(sched_setaffinity(
            0,
            mem::size_of::<libc::cpu_set_t>(),
            &set
        ))
    }
    .map(drop)
}

/// Context switches (voluntary and not) of this process's threads, the ended ones
/// included, and (`children`) of the children it has waited for.
pub fn context_switches(children: bool) -> u64 {
    let who = if children {
        libc::RUSAGE_CHILDREN
    } else {
        libc::RUSAGE_SELF
    };
    // SAFETY: rusage is plain data; all-zero is valid and getrusage overwrites it.
    let mut ru: libc::rusage = unsafe { mem::zeroed() };
    // SAFETY: the pointer is to a live local rusage, which getrusage(2) fills.
    if unsafe { syscall!(getrusage(who, &mut ru)) }.is_err() {
        return 0;
    }
    (ru.ru_nvcsw + ru.ru_nivcsw) as u64
}

/// poll(2) on `fds` for at most `timeout_ms` (-1: no limit): how many have events;
/// EINTR is 0.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and count describe the caller's live, writable slice of pollfds,
    // whose revents poll(2) writes.
    match unsafe {
        syscall!(poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout_ms
        ))
    } {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Accepts one connection as a non-blocking socket.
pub fn accept_nonblocking(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address and length pointers are allowed (the peer's address is not
    // wanted); nothing else is a pointer.
    let fd = unsafe {
        syscall!(accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
        ))
    }?;
    // SAFETY: accept4(2) just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The user id of the process at the other end of unix socket `fd` (SO_PEERCRED: the one
/// that connected).
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    // SAFETY: ucred is plain data; all-zero is valid and the kernel overwrites it.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the pointers are to the live local ucred and its length, which getsockopt(2)
    // fills (never beyond `len`).
    unsafe {
        syscall!(getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len
        ))
    }?;
    Ok(cred.uid)
}

/// The peer's address of a connected socket (getpeername(2)), IPv4-mapped IPv6 shown as IPv4.
pub fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid and the kernel overwrites it.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers are to the live local storage and its length, which getpeername(2)
    // fills (never beyond `len`).
    unsafe {
        syscall!(getpeername(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len
        ))
    }?;
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (the family says so) into storage that is
            // large and aligned enough for any address.
            let a: libc::sockaddr_in = unsafe { *(&ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Ok(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { *(&ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let ip = ip.to_canonical();
            Ok(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
        }
        f => Err(io::Error::other(format!("a peer of address family {f}"))),
    }
}

/// fdatasync(2): the file's data (not all its metadata) on the disk.
pub fn fdatasync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fdatasync(2) takes no pointers.
    unsafe { syscall!(fdatasync(fd)) }.map(drop)
}

/// Opens `path` to append to (O_APPEND, created 0644 if absent), as a log is.
pub fn open_append(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)?;
    Ok(OwnedFd::from(file))
}

/// The local time of `unix` seconds (localtime_r(3): TZ, else /etc/localtime), and its offset
/// from UTC in seconds.
pub fn local_time(unix: i64) -> (libc::tm, i64) {
    // SAFETY: tm is plain data; all-zero is valid and localtime_r overwrites it.
    let mut tm: libc::tm = unsafe { mem::zeroed() };
    let t = unix as libc::time_t;
    // SAFETY: both pointers are to live locals; localtime_r(3) reads the first and fills the
    // second (it is the thread-safe form).
    unsafe { libc::localtime_r(&t, &mut tm) };
    let offset = tm.tm_gmtoff;
    (tm, offset)
}

/// read(2) into `buf`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe the caller's live, writable slice, so read(2)
    // writes only inside it.
    unsafe { syscall!(read(fd, buf.as_mut_ptr().cast(), buf.len())) }.map(|n| n as usize)
}

/// write(2) from `buf`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the pointer and length describe the caller's live slice; write(2) only reads it.
    unsafe { syscall!(write(fd, buf.as_ptr().cast(), buf.len())) }.map(|n| n as usize)
}

/// shutdown(2) of the write side: the peer reads EOF once what was written has arrived.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) takes no pointers: an fd and a flag.
    unsafe { syscall!(shutdown(fd, libc::SHUT_WR)) }.map(drop)
}

/// u64 counters in memory shared with the worker processes this one starts: a memfd
/// (inherited across exec: no CLOEXEC) mapped MAP_SHARED by each of them. Slot 0 is `get`;
/// the others are `slot(i)`.
pub struct SharedCounter {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    slots: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is only ever accessed through the AtomicU64s, which are Sync; the
// pointer stays valid until Drop unmaps it.
unsafe impl Send for SharedCounter {}
// SAFETY: as above: all access is atomic.
unsafe impl Sync for SharedCounter {}

impl SharedCounter {
    /// `slots` new counters at 0 (at least one), whose fd children inherit.
    pub fn create(slots: usize) -> io::Result<SharedCounter> {
        let slots = slots.max(1);
        // SAFETY: the name is a NUL-terminated 'static literal, which memfd_create(2) only
        // reads. No flags: no CLOEXEC, so the fd survives exec into the workers.
        let raw = unsafe { syscall!(memfd_create(c"c1m-conns".as_ptr(), 0)) }?;
        // SAFETY: memfd_create just returned this fd, owned by no one else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate(2) takes no pointers: an fd and a length.
        unsafe { syscall!(ftruncate(fd.as_raw_fd(), (slots * 8) as libc::off_t)) }?;
        SharedCounter::map(fd, slots)
    }

    /// The counters behind `fd`, inherited from the process that created them. An fd whose
    /// length is not a whole number of counters is refused (and left open).
    ///
    /// # Safety
    ///
    /// `fd` must be the fd of counters made by `create` in an ancestor of this process (the
    /// master passes its number to each worker), open, and owned by nothing else in this
    /// process: the counter takes it over and closes it on drop, and maps it as memory that
    /// only these processes touch, and only atomically.
    pub unsafe fn inherit(fd: RawFd) -> io::Result<SharedCounter> {
        let mut st: libc::stat = zeroed_stat();
        // SAFETY: the pointer is to a live local stat, which fstat(2) fills; a bad fd is an
        // error return.
        unsafe { syscall!(fstat(fd, &mut st)) }?;
        if st.st_size <= 0 || st.st_size % 8 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} is not a shared counter"),
            ));
        }
        // SAFETY: the caller guarantees `fd` is open and owned by nothing else here.
        SharedCounter::map(unsafe { OwnedFd::from_raw_fd(fd) }, st.st_size as usize / 8)
    }

    fn map(fd: OwnedFd, slots: usize) -> io::Result<SharedCounter> {
        // SAFETY: a fresh shared mapping of the fd's `slots` u64s at an address the kernel
        // picks; the result is checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                slots * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast()).expect("mmap never returns null on success");
        Ok(SharedCounter { ptr, slots, fd })
    }

    /// The fd to pass to a child.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Slot 0.
    pub fn get(&self) -> &std::sync::atomic::AtomicU64 {
        self.slot(0)
    }

    /// Slot `i`; panics past the last.
    pub fn slot(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < self.slots, "slot {i} of {} shared counters", self.slots);
        // SAFETY: the mapping is page-aligned (so every u64 in it is aligned), `slots` u64s
        // long (i is below that), alive until Drop, and only ever accessed atomically, here
        // and in the other processes.
        unsafe { self.ptr.add(i).as_ref() }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }
}

impl Drop for SharedCounter {
    fn drop(&mut self) {
        // SAFETY: unmaps the `slots` u64s `map` mapped; no reference from `slot` outlives
        // `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.slots * 8) };
    }
}

fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is plain integers; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

/// Whether process `pid` exists (kill(2) with signal 0: EPERM means it does, not ours).
pub fn process_exists(pid: u32) -> bool {
    match kill(pid, 0) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// Sends `sig` to process `pid` (a child this process started).
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes no pointers: a pid and a signal number.
    unsafe { syscall!(kill(pid, sig)) }.map(drop)
}

/// write(2) of all of `bytes` to `fd` (a file: short writes go on, EINTR is retried).
pub fn write_all(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe `bytes`, which outlives the call.
        match unsafe { syscall!(write(fd, bytes.as_ptr().cast(), bytes.len())) } {
            Ok(n) => bytes = &bytes[n as usize..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// ftruncate(2): cuts the file `fd` at `len` bytes.
pub fn truncate(fd: RawFd, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate(2) takes no pointers.
    unsafe { syscall!(ftruncate(fd, len as libc::off_t)) }.map(drop)
}
