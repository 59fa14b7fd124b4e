//! fork(2), waitpid(2) and SIGCHLD for the fork model: a child that runs a closure and
//! `_exit`s, SIGCHLD as a readable pipe (the self-pipe trick), and what a child sets up:
//! its fds, death with its parent, and the stop signals that shut its connection's reads.
//! close_range(2) needs Linux 5.9 and glibc 2.34.

use std::io;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use super::syscall;

/// Forks. The child runs `child` and leaves with `_exit(2)` and its result as exit status,
/// never returning here: no destructor of what the parent holds runs twice, no buffered
/// stdio is flushed twice. The parent gets the child's pid.
///
/// The child of a multithreaded process holds only the forking thread: a lock another
/// thread held at the fork stays held there. `child` should therefore make only raw system
/// calls, touch memory allocated before the fork and take no lock (a lock taken would hang
/// the child, not corrupt the parent).
pub fn fork(child: impl FnOnce() -> i32) -> io::Result<u32> {
    // SAFETY: fork(2) takes no pointers. In the child it returns 0, and the branch below
    // never returns from this function there (it `_exit`s), so the child's copy of the
    // caller's stack and state is never unwound or dropped.
    match unsafe { syscall!(fork()) }? {
        0 => {
            // A panic in `child` (where it unwinds: the release profile aborts) must not
            // unwind into the caller's frames in the child: the guard `_exit`s first.
            let guard = ExitOnUnwind;
            let code = child();
            std::mem::forget(guard);
            exit_now(code)
        }
        pid => Ok(pid as u32),
    }
}

struct ExitOnUnwind;

impl Drop for ExitOnUnwind {
    fn drop(&mut self) {
        exit_now(70)
    }
}

/// `_exit(2)`: ends the process at once, with no atexit handlers and no stdio flush.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) takes no pointers and does not return.
    unsafe { libc::_exit(code) }
}

/// Reaps one child that has exited (waitpid(2) of any child, WNOHANG): its pid, or None if
/// no child has exited (or there is none).
pub fn reap() -> io::Result<Option<u32>> {
    let mut status = 0;
    loop {
        // SAFETY: the status pointer is to a live local int, which waitpid(2) fills.
        match unsafe { syscall!(waitpid(-1, &mut status, libc::WNOHANG)) } {
            Ok(0) => return Ok(None),
            Ok(pid) => return Ok(Some(pid as u32)),
            Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The write end of the SIGCHLD pipe, for the handler; -1 until `ChildExits::watch`.
static EXITS_WRITE: AtomicI32 = AtomicI32::new(-1);
static EXITS_READ: AtomicI32 = AtomicI32::new(-1);
static EXITS_INSTALL: Mutex<()> = Mutex::new(());

/// SIGCHLD as a readable fd: a handler writes a byte to a non-blocking pipe whenever a
/// child exits, so a loop in poll(2) wakes for it. A signalfd would not do: SIGCHLD would
/// have to be blocked in every thread, and model-server's main thread leaves it open, where
/// its default disposition (ignore) would discard it.
///
/// The pipe and the handler stay for the life of the process: a handler running in
/// another thread could otherwise write to a closed, reused fd number.
pub struct ChildExits {
    read: RawFd,
}

impl ChildExits {
    /// Installs the handler (SA_RESTART, so other threads' blocking calls go on; SA_NOCLDSTOP:
    /// only exits matter) and its pipe, once per process.
    pub fn watch() -> io::Result<ChildExits> {
        let _once = EXITS_INSTALL.lock().unwrap_or_else(|p| p.into_inner());
        let read = EXITS_READ.load(Ordering::Acquire);
        if read >= 0 {
            return Ok(ChildExits { read });
        }
        let mut fds = [-1; 2];
        // SAFETY: the pointer is to a live local array of two ints, which pipe2(2) fills.
        unsafe { syscall!(pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC)) }?;
        EXITS_WRITE.store(fds[1], Ordering::Release);
        set_handler(
            libc::SIGCHLD,
            on_child_exit,
            libc::SA_RESTART | libc::SA_NOCLDSTOP,
        )?;
        EXITS_READ.store(fds[0], Ordering::Release);
        Ok(ChildExits { read: fds[0] })
    }

    /// Readable once a child has exited since the last `drain`.
    pub fn fd(&self) -> RawFd {
        self.read
    }

    /// Empties the pipe (before reaping, so an exit after the reaping writes anew): how
    /// many read(2) calls it took.
    pub fn drain(&self) -> u64 {
        let mut buf = [0u8; 64];
        let mut calls = 1;
        while let Ok(1..) = super::read(self.read, &mut buf) {
            calls += 1;
        }
        calls
    }
}

extern "C" fn on_child_exit(_sig: libc::c_int) {
    let fd = EXITS_WRITE.load(Ordering::Acquire);
    let one = 1u8;
    // SAFETY: errno is this thread's, saved and restored around the write so the
    // interrupted code sees its own; write(2) is async-signal-safe and reads one byte of a
    // live local (a full pipe is EAGAIN: it is readable already).
    unsafe {
        let errno = *libc::__errno_location();
        libc::write(fd, (&one as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

fn set_handler(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int),
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all-zero is a valid value (an empty mask).
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as libc::sighandler_t;
    act.sa_flags = flags;
    // SAFETY: the pointer is to a live local sigaction, which sigaction(2) only reads; the
    // handler it names is an `extern "C" fn` that lives for the program; a null old-action
    // pointer is allowed.
    unsafe { syscall!(sigaction(sig, &act, std::ptr::null_mut())) }.map(drop)
}

/// In a forked child: closes every fd but stdin, stdout, stderr and `keep` (close_range(2),
/// Linux 5.9+). Its memory mappings stay (the shared counters among them).
pub fn close_fds_but(keep: RawFd) -> io::Result<()> {
    let keep = keep as libc::c_uint;
    if keep > 3 {
        // SAFETY: close_range(2) takes no pointers.
        unsafe { syscall!(close_range(3, keep - 1, 0)) }?;
    }
    // SAFETY: as above; `keep + 1` does not overflow, an fd being below i32::MAX.
    unsafe { syscall!(close_range((keep + 1).max(3), libc::c_uint::MAX, 0)) }.map(drop)
}

/// In a forked child: SIGKILL when the parent's thread that forked it ends (the parent cut
/// its connections at its deadline, or died). An error if that parent is already gone.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes a signal number, no pointers. It is
    // variadic and the kernel reads an unsigned long: the argument is passed as one.
    unsafe {
        syscall!(prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong
        ))
    }?;
    // SAFETY: getppid(2) takes nothing and cannot fail.
    if unsafe { libc::getppid() } as u32 != parent {
        // Reparented before the prctl: the parent ended first.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// The connection whose reads a stop signal shuts (in a forked child); -1 for none.
static STOP_READS: AtomicI32 = AtomicI32::new(-1);
/// A stop signal has come (in a forked child).
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a stop signal has come since `shut_reads_on_stop` (in a forked child).
pub fn stop_came() -> bool {
    STOPPED.load(Ordering::Acquire)
}

/// In a forked child (which inherits SIGINT and SIGTERM blocked): from now on SIGINT or
/// SIGTERM shuts the read side of `fd`, so the read the child is blocked in, or its next,
/// returns 0 once what has arrived is read: the child ends as at EOF, owing nothing. No
/// SA_RESTART, so a blocked read is woken rather than restarted. A signal sent before this
/// call was pending, and arrives here.
pub fn shut_reads_on_stop(fd: RawFd) -> io::Result<()> {
    STOP_READS.store(fd, Ordering::Release);
    set_handler(libc::SIGTERM, on_stop, 0)?;
    set_handler(libc::SIGINT, on_stop, 0)?;
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; SIGINT and SIGTERM are valid signal numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

extern "C" fn on_stop(_sig: libc::c_int) {
    STOPPED.store(true, Ordering::Release);
    let fd = STOP_READS.load(Ordering::Acquire);
    // SAFETY: errno is this thread's, saved and restored around the call; shutdown(2) is
    // async-signal-safe and takes no pointers.
    unsafe {
        let errno = *libc::__errno_location();
        libc::shutdown(fd, libc::SHUT_RD);
        *libc::__errno_location() = errno;
    }
}
