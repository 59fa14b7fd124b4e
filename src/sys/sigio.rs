//! Signal-driven I/O for the sigio model: O_ASYNC, F_SETSIG, F_SETOWN_EX, real-time signals.
//! Also the signal masks and waits the posix-aio model shares.
//!
//! The kernel's side (fs/fcntl.c, `send_sigio_to_task`): on each readiness change of an
//! O_ASYNC file it queues the F_SETSIG signal to the F_SETOWN_EX owner, with `si_code` one of
//! POLL_IN..POLL_HUP, `si_fd` the fd number given to F_SETSIG's fcntl and `si_band` the poll
//! bits. When the real-time queue is full (RLIMIT_SIGPENDING, counted per user) that fails
//! and it sends plain SIGIO instead (`si_code` SI_KERNEL), which is never lost but says
//! nothing of which fd. With an F_OWNER_TID owner both go to that thread, not the process
//! (measured on Linux 6.18: a thread that blocks them takes them while the main thread, which
//! does not, lives on); fcntl(2)'s "delivered to the entire process" is of older kernels.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use super::syscall;

// fcntl commands and owner kinds the libc crate does not define for Linux
// (<asm-generic/fcntl.h>).
const F_SETSIG: i32 = 10;
const F_SETOWN_EX: i32 = 15;
const F_OWNER_TID: i32 = 0;

/// `struct f_owner_ex` (<linux/fcntl.h> via <asm-generic/fcntl.h>).
#[repr(C)]
struct FOwnerEx {
    kind: i32,
    pid: libc::pid_t,
}

/// The `si_code`s of an I/O signal (<asm-generic/siginfo.h>): POLL_IN (1) to POLL_HUP (6).
pub const POLL_CODES: std::ops::RangeInclusive<i32> = 1..=6;

/// A set of signals, blocked in the thread that made it (`block`).
pub struct SigSet(libc::sigset_t);

/// Blocks `signals` in the calling thread (each is then taken only by `wait`): the set.
pub fn block(signals: &[i32]) -> io::Result<SigSet> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is a live sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: `set` is a live, initialised sigset_t; a bad number is an error return.
        unsafe { syscall!(sigaddset(&mut set, sig)) }?;
    }
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(SigSet(set))
}

/// Sends `sig`'s I/O signals for `fd` to thread `tid` of this process (F_SETOWN_EX,
/// F_OWNER_TID; Linux 2.6.32+).
pub fn set_owner_thread(fd: RawFd, tid: u32) -> io::Result<()> {
    let owner = FOwnerEx {
        kind: F_OWNER_TID,
        pid: tid as libc::pid_t,
    };
    // SAFETY: the pointer is to a live local f_owner_ex, which fcntl(2) only reads.
    unsafe { syscall!(fcntl(fd, F_SETOWN_EX, &owner as *const FOwnerEx)) }.map(drop)
}

/// Makes `sig` the signal `fd`'s readiness raises (F_SETSIG), so that each carries its
/// siginfo (`si_fd`, `si_band`) and, for a real-time one, each event is queued.
pub fn set_signal(fd: RawFd, sig: i32) -> io::Result<()> {
    // SAFETY: F_SETSIG takes an int; no pointers.
    unsafe { syscall!(fcntl(fd, F_SETSIG, sig)) }.map(drop)
}

/// Sets O_NONBLOCK and O_ASYNC on `fd` (F_SETFL changes only those status flags and
/// O_APPEND, O_DIRECT, O_NOATIME: the others given here are cleared): signals start.
pub fn set_async(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFL takes an int; no pointers.
    unsafe { syscall!(fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK | libc::O_ASYNC)) }.map(drop)
}

/// A signal taken by `wait`: its number and `si_code`, and for an I/O signal (`si_code` in
/// `POLL_CODES`) the fd and its poll bits.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    pub signo: i32,
    pub code: i32,
    pub fd: RawFd,
    pub band: i64,
}

/// Waits for one of `set`'s signals (sigwaitinfo(2)); None if a handled signal interrupted.
pub fn wait(set: &SigSet) -> io::Result<Option<Taken>> {
    // SAFETY: siginfo_t is plain data; all-zero is valid and the kernel overwrites it.
    let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
    // SAFETY: the set pointer is to a live initialised sigset_t, which sigwaitinfo(2) only
    // reads; the info pointer is to a live local siginfo_t, which it fills.
    let signo = match unsafe { syscall!(sigwaitinfo(&set.0, &mut info)) } {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(None),
        Err(e) => return Err(e),
    };
    let code = info.si_code;
    let (fd, band) = if POLL_CODES.contains(&code) {
        // SAFETY: an I/O signal's siginfo is the _sigpoll member of the union (the kernel
        // fills si_band and si_fd for these codes); reading plain integers.
        unsafe { (info.si_fd(), info.si_band() as i64) }
    } else {
        (-1, 0)
    };
    Ok(Some(Taken {
        signo,
        code,
        fd,
        band,
    }))
}

/// Discards every queued instance of `sig` (blocked, default action) in this process:
/// setting SIG_IGN discards the pending ones (POSIX.1, sigaction; the kernel flushes the
/// process's and each thread's queue), then the default is restored. Two system calls.
pub fn discard_queued(sig: i32) -> io::Result<()> {
    for handler in [libc::SIG_IGN, libc::SIG_DFL] {
        // SAFETY: sigaction is plain data; all-zero is an empty mask and no flags.
        let mut act: libc::sigaction = unsafe { mem::zeroed() };
        act.sa_sigaction = handler;
        // SAFETY: the new-action pointer is to a live local sigaction, which sigaction(2)
        // only reads; a null old-action pointer is allowed.
        unsafe { syscall!(sigaction(sig, &act, std::ptr::null_mut())) }?;
    }
    Ok(())
}

/// Sends `sig` to thread `tid` of this process (tgkill(2)).
pub fn tgkill(tid: u32, sig: i32) -> io::Result<()> {
    // SAFETY: getpid(2) takes nothing and cannot fail.
    let pid = unsafe { libc::getpid() };
    // SAFETY: tgkill(2) takes no pointers: two ids and a signal number.
    unsafe { syscall!(tgkill(pid, tid as libc::pid_t, sig)) }.map(drop)
}
