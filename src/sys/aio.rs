//! POSIX AIO (glibc): aio_read, aio_write and their completion notification, for the posix-aio model.
//!
//! glibc's AIO is user space (rt/aio_misc.c, in libc.so since 2.34): each request runs on a
//! helper thread (all signals blocked) that calls pread, then read when a socket answers
//! ESPIPE (measured with strace), blocking until it is done; requests on one fd run one after
//! another. A `Stream` is a socket with its control block and buffer on the heap, one
//! request at a time, which it never frees while glibc may touch them.
//!
//! Completion: glibc queues the SIGEV_SIGNAL signal to the process (rt_sigqueueinfo of
//! getpid(), `si_value` the request's token), so any thread not blocking it takes it.
//! `notifier` installs a handler that writes the token to a pipe, which the model polls.

use std::io;
use std::mem::{self, ManuallyDrop};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use super::syscall;

/// glibc's `struct aioinit` (<aio.h>, a GNU extension; not in the libc crate).
#[repr(C)]
struct AioInit {
    aio_threads: libc::c_int,
    aio_num: libc::c_int,
    aio_locks: libc::c_int,
    aio_usedba: libc::c_int,
    aio_debug: libc::c_int,
    aio_numusers: libc::c_int,
    aio_idle_time: libc::c_int,
    aio_reserved: libc::c_int,
}

unsafe extern "C" {
    /// glibc's aio_init(3): only effective before the first request.
    fn aio_init(init: *const AioInit);
}

/// Lets glibc run up to `threads` helper threads (its default is 20; beyond it, requests
/// wait for a helper to free up) for about `requests` requests at once. Call before any
/// request. A helper idles 1 s (glibc's default) before it ends.
pub fn init(threads: u64, requests: u64) {
    let clamp = |n: u64| n.min(i32::MAX as u64) as libc::c_int;
    let init = AioInit {
        aio_threads: clamp(threads),
        aio_num: clamp(requests),
        aio_locks: 0,
        aio_usedba: 0,
        aio_debug: 0,
        aio_numusers: 0,
        aio_idle_time: 0, // 0: keep glibc's
        aio_reserved: 0,
    };
    // SAFETY: the pointer is to a live local aioinit, which aio_init only reads.
    unsafe { aio_init(&init) };
}

/// What `Stream::cancel` found (aio_cancel(3)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// It was still queued: it completes now with ECANCELED, notified as usual.
    Canceled,
    /// A helper thread is running it (a socket read blocked in read(2)): it completes as it
    /// would have.
    NotCanceled,
    /// It had completed.
    AllDone,
}

/// A socket served by AIO, one request at a time: its control block and buffer live on the
/// heap, at addresses glibc's helper thread uses until the request completes. Dropped with a
/// request in flight, it leaks them and the socket rather than free what glibc may still
/// touch (or close an fd number a helper may still read).
pub struct Stream {
    sock: ManuallyDrop<OwnedFd>,
    cb: *mut libc::aiocb,
    buf: *mut u8,
    len: usize,
    in_flight: bool,
}

impl Stream {
    /// `sock` (blocking: the helper waits in its read) with a buffer of `bytes`.
    pub fn new(sock: OwnedFd, bytes: usize) -> Stream {
        // SAFETY: aiocb is plain data (ints, pointers, a sigevent); all-zero is valid.
        let cb: libc::aiocb = unsafe { mem::zeroed() };
        let buf = Box::into_raw(vec![0u8; bytes].into_boxed_slice());
        Stream {
            sock: ManuallyDrop::new(sock),
            cb: Box::into_raw(Box::new(cb)),
            buf: buf.cast(),
            len: bytes,
            in_flight: false,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Whether a request was submitted and `finish` has not seen it complete.
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// aio_read into the whole buffer; its completion raises `sig` with `token`.
    pub fn read(&mut self, token: usize, sig: i32) -> io::Result<()> {
        self.submit(0..self.len, token, sig, false)
    }

    /// aio_write of `range` of the buffer (what the last read put there).
    pub fn write(&mut self, range: Range<usize>, token: usize, sig: i32) -> io::Result<()> {
        self.submit(range, token, sig, true)
    }

    fn submit(
        &mut self,
        range: Range<usize>,
        token: usize,
        sig: i32,
        write: bool,
    ) -> io::Result<()> {
        assert!(!self.in_flight, "one request at a time on a stream");
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: aiocb is plain data; all-zero is valid (glibc wants it zeroed, aio(7)).
        let mut cb: libc::aiocb = unsafe { mem::zeroed() };
        cb.aio_fildes = self.fd();
        // SAFETY: range.start is at most len, so the pointer stays inside (or one past) the
        // buffer's allocation.
        cb.aio_buf = unsafe { self.buf.add(range.start) }.cast();
        cb.aio_nbytes = range.len();
        cb.aio_sigevent.sigev_notify = libc::SIGEV_SIGNAL;
        cb.aio_sigevent.sigev_signo = sig;
        cb.aio_sigevent.sigev_value = libc::sigval {
            sival_ptr: token as *mut libc::c_void,
        };
        // SAFETY: no request is in flight, so no helper thread holds the block: this thread
        // alone touches it.
        unsafe { self.cb.write(cb) };
        // SAFETY: the block and the `range` of the buffer it names are live heap memory that
        // stays put and is not freed until `finish` has seen the request complete (Drop
        // leaks them otherwise), nor is the fd closed; the buffer is not read or written
        // here meanwhile. That is aio_read(3)'s and aio_write(3)'s contract.
        let submitted = unsafe {
            if write {
                syscall!(aio_write(self.cb))
            } else {
                syscall!(aio_read(self.cb))
            }
        };
        submitted?;
        self.in_flight = true;
        Ok(())
    }

    /// The request's result once it has completed (aio_error, then aio_return: two calls);
    /// None while it runs, or if none is in flight.
    pub fn finish(&mut self) -> Option<io::Result<usize>> {
        if !self.in_flight {
            return None;
        }
        // SAFETY: the block is live (freed only when idle); aio_error only reads its status,
        // which the helper sets under glibc's lock before notifying.
        let status = unsafe { libc::aio_error(self.cb) };
        if status == libc::EINPROGRESS {
            return None;
        }
        // SAFETY: as above; aio_return is called once per completed request, as it must be.
        let ret = unsafe { libc::aio_return(self.cb) };
        self.in_flight = false;
        Some(match status {
            0 => Ok(ret as usize),
            e => Err(io::Error::from_raw_os_error(e)),
        })
    }

    /// aio_cancel of the request in flight, if any.
    pub fn cancel(&mut self) -> io::Result<Cancel> {
        if !self.in_flight {
            return Ok(Cancel::AllDone);
        }
        // SAFETY: the block is live and was submitted on this fd, as aio_cancel(3) needs.
        match unsafe { syscall!(aio_cancel(self.fd(), self.cb)) }? {
            libc::AIO_CANCELED => Ok(Cancel::Canceled),
            libc::AIO_NOTCANCELED => Ok(Cancel::NotCanceled),
            _ => Ok(Cancel::AllDone),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.in_flight {
            // A helper thread may still write the block and the buffer, and use the fd:
            // leaked, all three (only an error return with requests in flight gets here).
            return;
        }
        // SAFETY: both came from Box::into_raw in `new` (the buffer as a slice of `len`),
        // no request is in flight, and they are freed only here, once.
        unsafe {
            drop(Box::from_raw(self.cb));
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.buf, self.len,
            )));
        }
        // SAFETY: the socket is dropped only here, once, and nothing uses it after.
        unsafe { ManuallyDrop::drop(&mut self.sock) };
    }
}

/// The pipe's write end, for the handler (-1: none yet).
static NOTIFY_FD: AtomicI32 = AtomicI32::new(-1);

/// Tokens of completed requests, written by the signal handler.
pub struct Notifier {
    read: OwnedFd,
    sig: i32,
}

/// The notifier of `sig` (made once, then the same): a pipe, and an SA_SIGINFO handler for
/// `sig` that writes each AIO completion's token to it (8 bytes, a single atomic write as
/// any of at most PIPE_BUF). The write end blocks when the pipe is full, holding the thread
/// the handler interrupted until the reader takes some: no completion is lost; so the reader
/// must block `sig`, lest the handler wait on itself. Neither end is ever closed: a late
/// signal never writes into a reused fd. Two system calls (pipe2, sigaction).
pub fn notifier(sig: i32) -> io::Result<&'static Notifier> {
    static MADE: Mutex<Option<&'static Notifier>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = *made {
        if n.sig != sig {
            return Err(io::Error::other(format!(
                "AIO notifies by signal {}, not {sig}",
                n.sig
            )));
        }
        return Ok(n);
    }
    let mut ends = [0; 2];
    // SAFETY: the pointer is to a live local [c_int; 2], which pipe2(2) fills.
    unsafe { syscall!(pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC)) }?;
    // SAFETY: pipe2 just returned these fds and nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    // The write end lives as long as the process (see above).
    NOTIFY_FD.store(
        std::os::fd::IntoRawFd::into_raw_fd(write),
        Ordering::Release,
    );
    // SAFETY: sigaction is plain data; all-zero is an empty mask and no flags.
    let mut act: libc::sigaction = unsafe { mem::zeroed() };
    act.sa_sigaction = on_completion as *const () as libc::sighandler_t;
    // SA_RESTART: the interrupted thread's read, write and the like resume, not EINTR.
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: the new-action pointer is to a live local sigaction naming a handler of the
    // SA_SIGINFO signature; a null old-action pointer is allowed.
    unsafe { syscall!(sigaction(sig, &act, std::ptr::null_mut())) }?;
    let n: &'static Notifier = Box::leak(Box::new(Notifier { read, sig }));
    *made = Some(n);
    Ok(n)
}

impl Notifier {
    /// The pipe's read end (readable: tokens are there).
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Reads the tokens there are, up to `out.len()` (blocks if there are none): how many.
    pub fn take(&self, out: &mut [u64]) -> io::Result<usize> {
        // SAFETY: the pointer and byte length describe the caller's live, writable slice of
        // u64s, which read(2) fills only inside; any bytes are a valid u64.
        let n = unsafe {
            syscall!(read(
                self.read.as_raw_fd(),
                out.as_mut_ptr().cast(),
                mem::size_of_val(out)
            ))
        }?;
        // Tokens go in whole (atomic 8-byte writes) and are read in multiples of 8.
        Ok(n as usize / 8)
    }
}

/// The handler: async-signal-safe only (an atomic load, write(2), errno kept as it was).
extern "C" fn on_completion(_sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let fd = NOTIFY_FD.load(Ordering::Acquire);
    if fd < 0 || info.is_null() {
        return;
    }
    // SAFETY: the kernel passes an SA_SIGINFO handler a valid siginfo; glibc's AIO fills its
    // si_value (the _rt member) for SI_ASYNCIO, which is checked first.
    let token = unsafe {
        if (*info).si_code != libc::SI_ASYNCIO {
            return;
        }
        (*info).si_value().sival_ptr as u64
    };
    // SAFETY: __errno_location is this thread's errno, valid while it lives; write(2) may
    // change it under the code this handler interrupted, so it is put back.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the pointer and length are the live local u64's 8 bytes, which write(2) reads.
    unsafe { libc::write(fd, (&token as *const u64).cast(), 8) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}
