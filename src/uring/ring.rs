//! One io_uring (SINGLE_ISSUER | DEFER_TASKRUN, kernel 6.1+) and every piece of memory the
//! kernel may touch through it: the provided-buffer ring, the data of sends in flight, the
//! addresses connects read, the eventfd counter. This is the only place SQEs are pushed; each
//! push method first takes ownership of what the operation will touch, and the memory is
//! released only by the completion that ends the operation. The ring is generic over its
//! user's operation kinds (`K`), which it encodes into `user_data` and never interprets.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::bufring::BufRing;
use super::probe::{self, Need};
use super::user_data::{Op, UserData};
use crate::sys::SockAddr;

/// One completion, copied out of the CQ.
#[derive(Debug)]
pub struct Completion<K> {
    pub ud: UserData<K>,
    pub res: i32,
    pub flags: u32,
    /// For a `send_vec`: the bytes the send owned and the offset it started at, handed back
    /// for a short send's rest or for reuse of the allocation.
    pub vec: Option<(Vec<u8>, usize)>,
    /// For an `install_fixed` that succeeded: the fd it installed, now the caller's.
    pub installed: Option<OwnedFd>,
}

impl<K> Completion<K> {
    /// The multishot that posted this goes on (IORING_CQE_F_MORE).
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// The provided buffer this completion filled.
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

/// Ring sizes: the SQ is flushed when full, the CQ sized for a loop turn's burst (the kernel
/// keeps overflowed completions, IORING_FEAT_NODROP, and we count them).
pub struct RingConfig {
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub fixed_files: u32,
    /// Provided buffers: (count, size); None for no buffer ring.
    pub bufs: Option<(u16, u32)>,
    /// Batch completions: wait for up to `BATCH_WANT` of them, or this many microseconds
    /// once at least one is there (0: return at the first). Fewer wake-ups and less CPU per
    /// completion, for about this much latency more (a request that arrives during the
    /// turn's submit waits for it too). Kernel 6.12+ (IORING_FEAT_MIN_TIMEOUT).
    pub batch_usec: u32,
    /// An eventfd the kernel signals when the ring has work for its thread (see `notify`):
    /// for a thread that drives several rings and waits on all of their eventfds at once.
    pub notify: Option<RawFd>,
}

/// SQ entries: a loop turn pushes at most a few SQEs per completion, and a full SQ is
/// submitted and reused, so this bounds syscalls, not correctness.
pub const SQ_ENTRIES: u32 = 4096;
/// CQ entries: sized for a loop turn's burst; overflow is kept by the kernel and counted.
pub const CQ_ENTRIES: u32 = 16384;

/// Completions a batched wait waits for before its minimum wait has passed.
pub const BATCH_WANT: usize = 64;
/// How long a batched wait with no deadline of its own sleeps at most (see `submit_and_wait`).
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// The bytes a `send_vec` in flight owns, with the `user_data` whose completion ends it.
struct SendVec {
    ud: u64,
    data: Vec<u8>,
    start: usize,
}

/// What the `write_file` (or `sync_file`) in flight owns: its bytes, and the file, which
/// must stay open until the operation completes (a reopen may have replaced it meanwhile).
struct FileWrite {
    ud: u64,
    bytes: Option<SendVec>,
    _file: Arc<OwnedFd>,
}

pub struct Ring<K> {
    // Field order is drop order: the io_uring goes first, then the memory it may touch.
    uring: IoUring,
    bufs: Option<BufRing>,
    /// Bytes owned by the `send_vec` in flight on each slot (one send in flight per slot).
    send_vecs: Vec<Option<SendVec>>,
    /// The `write_file`s and `sync_file`s in flight (a few: one user_data each).
    file_ops: Vec<FileWrite>,
    /// The `user_data` of each `install_fixed` in flight: its result is an fd to own.
    installing: HashSet<u64>,
    /// Read-only memory sends may point into; lives as long as the ring.
    regions: Vec<Box<[u8]>>,
    /// Socket addresses connects read; live as long as the ring. Boxed so that growing the
    /// Vec never moves an address the kernel may still read.
    #[allow(clippy::vec_box)]
    addrs: Vec<Box<SockAddr>>,
    /// Where the wake-up eventfd's counter is read to.
    wake_buf: Box<u64>,
    /// The value 1, for boolean socket options set through the ring.
    one: Box<i32>,
    /// Operations pushed whose final completion has not been seen.
    in_flight: usize,
    batch_usec: u32,
    /// io_uring_enter calls made.
    pub enters: u64,
    kinds: std::marker::PhantomData<K>,
}

impl<K: Op> Ring<K> {
    /// Must be called on the thread that will submit (IORING_SETUP_SINGLE_ISSUER).
    pub fn new(cfg: &RingConfig) -> io::Result<Self> {
        let mut builder = IoUring::builder();
        builder
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cfg.cq_entries);
        if cfg.notify.is_some() {
            // IORING_SQ_TASKRUN then says when deferred completions wait (`has_work`).
            builder.setup_taskrun_flag();
        }
        let uring = builder.build(cfg.sq_entries).map_err(probe::setup_error)?;
        if cfg.batch_usec > 0 {
            probe::require(&uring, Need::MinTimeout, "--batch-usec")?;
        }
        let submitter = uring.submitter();
        submitter.register_files_sparse(cfg.fixed_files)?;
        if let Some(fd) = cfg.notify {
            submitter.register_eventfd(fd)?;
        }
        let bufs = match cfg.bufs {
            Some((count, size)) => Some(BufRing::new(&submitter, 0, count, size)?),
            None => None,
        };
        Ok(Ring {
            uring,
            bufs,
            send_vecs: Vec::new(),
            file_ops: Vec::new(),
            installing: HashSet::new(),
            regions: Vec::new(),
            addrs: Vec::new(),
            wake_buf: Box::new(0),
            one: Box::new(1),
            batch_usec: cfg.batch_usec,
            in_flight: 0,
            enters: 0,
            kinds: std::marker::PhantomData,
        })
    }

    /// Fails with "`what` needs Linux ..." unless this kernel has `need`.
    pub fn require(&self, need: Need, what: &str) -> io::Result<()> {
        probe::require(&self.uring, need, what)
    }

    pub fn bufs(&self) -> &BufRing {
        self.bufs
            .as_ref()
            .expect("ring was built with provided buffers")
    }

    pub fn bufs_mut(&mut self) -> &mut BufRing {
        self.bufs
            .as_mut()
            .expect("ring was built with provided buffers")
    }

    /// Operations pushed and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Completions the kernel could not fit in the CQ so far (kept and delivered later).
    pub fn cq_overflow(&mut self) -> u64 {
        u64::from(self.uring.completion().overflow())
    }

    /// The single place SQEs enter the SQ. When it is full, submits and retries.
    ///
    /// # Safety
    /// Every buffer the entry points to must stay valid, and not be written by us if the
    /// kernel reads it, until the operation's final completion has been reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.in_flight += 1;
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Pushes a chain of linked entries, all or none, submitting first if they do not fit.
    ///
    /// # Safety
    /// As for `push`, for every entry.
    unsafe fn push_linked(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.uring.submission().push_multiple(entries) }.is_ok() {
                self.in_flight += entries.len();
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        self.enters += 1;
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(e) if retryable(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submits what is queued and waits for at least one completion, or until `timeout`.
    /// Batched (`batch_usec`), it waits for `want` completions (at most `BATCH_WANT`) before
    /// the minimum wait has passed: a caller with few connections asks for no more than they
    /// can complete, or each of their round trips would wait out the whole minimum.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>, want: usize) -> io::Result<()> {
        self.wait_with(timeout, self.batch_usec, want.clamp(1, BATCH_WANT))
    }

    /// `submit_and_wait` without the minimum wait: back at the first completion, for a
    /// waiter that something waits on (replies held until a sync completes).
    pub fn submit_and_wait_unbatched(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.wait_with(timeout, 0, 1)
    }

    fn wait_with(
        &mut self,
        timeout: Option<Duration>,
        batch_usec: u32,
        want: usize,
    ) -> io::Result<()> {
        self.enters += 1;
        let res = match (timeout, batch_usec) {
            (None, 0) => self.uring.submit_and_wait(1),
            (Some(t), 0) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(1, &args)
            }
            (t, usec) => {
                // Without a general timeout, the end of the minimum wait wakes the waiter
                // even when nothing completed (io_cqring_min_timer_wakeup: "no general
                // timeout ... we are done"), so an idle ring would wake every `usec`; with
                // one, it goes back to sleep until a completion or the timeout.
                let ts = types::Timespec::from(t.unwrap_or(IDLE_WAIT));
                let args = types::SubmitArgs::new().timespec(&ts).min_wait_usec(usec);
                self.uring.submitter().submit_with_args(want, &args)
            }
        };
        match res {
            Ok(_) => Ok(()),
            Err(e) if retryable(&e) || e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether an enter has anything to do: SQEs queued, deferred completions to post
    /// (IORING_SQ_TASKRUN: rings built with `notify` only), or overflowed ones to flush.
    pub fn has_work(&mut self) -> bool {
        let sq = self.uring.submission();
        !sq.is_empty() || sq.taskrun() || sq.cq_overflow()
    }

    /// Stops the `notify` eventfd, while the ring's own thread runs it: under DEFER_TASKRUN
    /// the completions it posts in its own enter would signal it too (io_eventfd_grab
    /// checks IORING_CQ_EVENTFD_DISABLED on every path).
    pub fn mute(&mut self) {
        self.uring.completion().disable_eventfd();
    }

    /// Restarts the `notify` eventfd; true if work came while it was muted, which signalled
    /// nothing (the kernel signals only when its deferred list goes from empty to not).
    pub fn unmute(&mut self) -> bool {
        self.uring.completion().enable_eventfd();
        // Pairs with the kernel's barrier between queueing deferred work (and setting
        // IORING_SQ_TASKRUN) and reading the CQ flags: either it saw the eventfd enabled
        // and signals, or we see the flag.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let posted = !self.uring.completion().is_empty();
        posted || self.has_work()
    }

    /// Moves every completion now in the CQ into `out`.
    pub fn drain(&mut self, out: &mut Vec<Completion<K>>) {
        let mut cq = self.uring.completion();
        cq.sync();
        for cqe in &mut cq {
            let Some(ud) = UserData::decode(cqe.user_data()) else {
                continue;
            };
            let flags = cqe.flags();
            if !cqueue::more(flags) {
                self.in_flight -= 1;
            }
            let vec = self
                .send_vecs
                .get_mut(ud.slot as usize)
                .and_then(|v| v.take_if(|v| v.ud == cqe.user_data()))
                .or_else(|| {
                    let i = self.file_ops.iter().position(|w| w.ud == cqe.user_data())?;
                    self.file_ops.swap_remove(i).bytes
                })
                .map(|v| (v.data, v.start));
            let installed = (!self.installing.is_empty()
                && self.installing.remove(&cqe.user_data())
                && cqe.result() >= 0)
                // SAFETY: a FIXED_FD_INSTALL's non-negative result is an fd the kernel just
                // put in our table for us; nothing else owns it.
                .then(|| unsafe { OwnedFd::from_raw_fd(cqe.result()) });
            out.push(Completion {
                ud,
                res: cqe.result(),
                flags,
                vec,
                installed,
            });
        }
    }

    pub fn accept_multishot(&mut self, listener: RawFd, ud: UserData<K>) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(listener))
            // SOCK_CLOEXEC is -EINVAL with a direct descriptor, which no exec can inherit anyway.
            .allocate_file_index(true)
            .build()
            .user_data(ud.encode());
        // SAFETY: a multishot accept into direct descriptors points to no memory of ours.
        unsafe { self.push(&e) }
    }

    /// One accept into a direct descriptor the kernel allocates (used near a full table,
    /// where a multishot accept could overshoot it).
    pub fn accept_one(&mut self, listener: RawFd, ud: UserData<K>) -> io::Result<()> {
        let e = opcode::Accept::new(
            types::Fd(listener),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .file_index(Some(types::DestinationSlot::auto_target()))
        .build()
        .user_data(ud.encode());
        // SAFETY: null address pointers: the accept writes no memory of ours.
        unsafe { self.push(&e) }
    }

    pub fn recv_multishot(&mut self, fixed: u32, ud: UserData<K>) -> io::Result<()> {
        let bgid = self.bufs().bgid();
        let e = opcode::RecvMulti::new(types::Fixed(fixed), bgid)
            .build()
            .user_data(ud.encode());
        // SAFETY: the recv writes only into provided buffers, which the BufRing owned by this
        // Ring keeps mapped until after the io_uring is dropped.
        unsafe { self.push(&e) }
    }

    /// Sends `len` bytes from byte `off` of provided buffer `bid`, which the caller holds
    /// (it must not recycle `bid` before this send completes).
    pub fn send_buf(
        &mut self,
        fixed: u32,
        bid: u16,
        off: u32,
        len: u32,
        ud: UserData<K>,
    ) -> io::Result<()> {
        let ptr = self.bufs().addr(bid, off, len);
        let e = opcode::Send::new(types::Fixed(fixed), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud.encode());
        // SAFETY: the bytes lie in the BufRing's mapping (bounds checked by `addr`), which
        // lives as long as the ring; a held buffer is not in the ring, so the kernel does not
        // write it while it is sent.
        unsafe { self.push(&e) }
    }

    /// Sends `data[start..]`; the ring owns `data` until the completion hands it back.
    pub fn send_vec(
        &mut self,
        fixed: u32,
        data: Vec<u8>,
        start: usize,
        ud: UserData<K>,
    ) -> io::Result<()> {
        assert!(start < data.len(), "send_vec of nothing");
        let slot = ud.slot as usize;
        if self.send_vecs.len() <= slot {
            self.send_vecs.resize_with(slot + 1, || None);
        }
        assert!(
            self.send_vecs[slot].is_none(),
            "two sends in flight on slot {slot}"
        );
        let len = u32::try_from(data.len() - start).unwrap_or(u32::MAX);
        let ptr = data[start..].as_ptr();
        self.send_vecs[slot] = Some(SendVec {
            ud: ud.encode(),
            data,
            start,
        });
        let e = opcode::Send::new(types::Fixed(fixed), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud.encode());
        // SAFETY: the Vec now lives in `send_vecs[slot]`, its heap block does not move, and
        // only `drain` takes it out, on this operation's completion (or the ring leaks it).
        unsafe { self.push(&e) }
    }

    /// Pins read-only memory for the life of the ring; sends may point into it.
    pub fn pin_region(&mut self, bytes: Box<[u8]>) -> usize {
        self.regions.push(bytes);
        self.regions.len() - 1
    }

    pub fn region(&self, region: usize) -> &[u8] {
        &self.regions[region]
    }

    /// Sends `len` bytes at `off` of a pinned region.
    pub fn send_region(
        &mut self,
        fixed: u32,
        region: usize,
        off: usize,
        len: usize,
        ud: UserData<K>,
    ) -> io::Result<()> {
        let bytes = &self.regions[region][off..off + len];
        let e = opcode::Send::new(types::Fixed(fixed), bytes.as_ptr(), len as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud.encode());
        // SAFETY: regions are never written or freed while the ring lives (bounds checked
        // by the slice above).
        unsafe { self.push(&e) }
    }

    /// Pins a socket address (either family) for the life of the ring, for `socket_connect`.
    pub fn pin_addr(&mut self, addr: SocketAddr) -> usize {
        self.addrs.push(Box::new(SockAddr::new(addr)));
        self.addrs.len() - 1
    }

    /// SOCKET of `addr`'s family into direct slot `fixed`, linked to CONNECT on it to pinned
    /// address `addr`; with a pinned `source` (of the same family), SETSOCKOPT
    /// (IP_BIND_ADDRESS_NO_PORT, which IPv6 sockets take at the IPPROTO_IP level too) and
    /// BIND to it come between, so the source port is picked at connect time per 4-tuple
    /// rather than reserved per bind. Every step posts its own completion, with its
    /// `user_data` from `steps`; a failed step cancels the rest of the chain.
    pub fn socket_connect(
        &mut self,
        fixed: u32,
        source: Option<usize>,
        addr: usize,
        steps: &ConnectSteps<K>,
    ) -> io::Result<()> {
        let dest = types::DestinationSlot::try_from_slot_target(fixed)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "slot out of range"))?;
        let target: &SockAddr = &self.addrs[addr];
        let socket = opcode::Socket::new(target.family(), libc::SOCK_STREAM, 0)
            .file_index(Some(dest))
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(steps.socket.encode());
        let connect = opcode::Connect::new(types::Fixed(fixed), target.as_ptr(), target.socklen())
            .build()
            .user_data(steps.connect.encode());
        match source {
            // SAFETY: the sockaddr is boxed in `addrs`, never freed or written while the
            // ring lives.
            None => unsafe { self.push_linked(&[socket, connect]) },
            Some(src) => {
                let src: &SockAddr = &self.addrs[src];
                if src.family() != target.family() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "source and destination of different address families",
                    ));
                }
                let one: *const i32 = &*self.one;
                let sockopt = opcode::SetSockOpt::new(
                    types::Fixed(fixed),
                    libc::IPPROTO_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    one.cast(),
                    std::mem::size_of::<i32>() as u32,
                )
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(steps.sockopt.encode());
                let bind = opcode::Bind::new(types::Fixed(fixed), src.as_ptr(), src.socklen())
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(steps.bind.encode());
                // SAFETY: both sockaddrs are boxed in `addrs` and the option value in `one`;
                // none is freed or written while the ring lives.
                unsafe { self.push_linked(&[socket, sockopt, bind, connect]) }
            }
        }
    }

    /// Cancels the request whose user_data is `target`. Matching by user_data is a hash
    /// lookup in the kernel; matching by fd (IORING_ASYNC_CANCEL_FD) scans every pending
    /// request, which made closing 15,000 connections take seconds.
    pub fn cancel(&mut self, target: UserData<K>, ud: UserData<K>) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(ud.encode());
        // SAFETY: a cancel points to no memory.
        unsafe { self.push(&e) }
    }

    /// Shuts the write side of direct descriptor `fixed` (the peer reads EOF).
    pub fn shutdown_write(&mut self, fixed: u32, ud: UserData<K>) -> io::Result<()> {
        let e = opcode::Shutdown::new(types::Fixed(fixed), libc::SHUT_WR)
            .build()
            .user_data(ud.encode());
        // SAFETY: a shutdown points to no memory.
        unsafe { self.push(&e) }
    }

    /// Closes direct descriptor `fixed`, freeing its table slot.
    pub fn close_fixed(&mut self, fixed: u32, ud: UserData<K>) -> io::Result<()> {
        let e = opcode::Close::new(types::Fixed(fixed))
            .build()
            .user_data(ud.encode());
        // SAFETY: a close points to no memory.
        unsafe { self.push(&e) }
    }

    /// Writes `data[start..]` to `file` (opened O_APPEND: at its end); the ring owns both
    /// until the completion hands `data` back. One operation per `ud` in flight.
    pub fn write_file(
        &mut self,
        file: Arc<OwnedFd>,
        data: Vec<u8>,
        start: usize,
        ud: UserData<K>,
    ) -> io::Result<()> {
        let e = self.file_write(file, data, start, ud);
        // SAFETY: the Vec and the file now live in `file_ops`; the Vec's heap block does not
        // move, and only `drain` takes them out, on this operation's completion (or the ring
        // leaks them).
        unsafe { self.push(&e) }
    }

    /// `write_file`, linked to a `sync_file` of the same file that starts once the write has
    /// completed whole (a short write cancels it: -ECANCELED).
    pub fn write_then_sync(
        &mut self,
        file: Arc<OwnedFd>,
        data: Vec<u8>,
        start: usize,
        write: UserData<K>,
        sync: UserData<K>,
    ) -> io::Result<()> {
        let w = self
            .file_write(file.clone(), data, start, write)
            .flags(squeue::Flags::IO_LINK);
        let s = self.file_sync(file, sync);
        // SAFETY: as for `write_file` and `sync_file`: both live in `file_ops` until their
        // completions.
        unsafe { self.push_linked(&[w, s]) }
    }

    /// fdatasync(2) of `file` (IORING_OP_FSYNC with IORING_FSYNC_DATASYNC); one operation per
    /// `ud` in flight, as `write_file`.
    pub fn sync_file(&mut self, file: Arc<OwnedFd>, ud: UserData<K>) -> io::Result<()> {
        let e = self.file_sync(file, ud);
        // SAFETY: a sync points to no memory; the file stays open in `file_ops` until its
        // completion.
        unsafe { self.push(&e) }
    }

    /// The entry of a `write_file`, its bytes and file kept in `file_ops`.
    fn file_write(
        &mut self,
        file: Arc<OwnedFd>,
        data: Vec<u8>,
        start: usize,
        ud: UserData<K>,
    ) -> squeue::Entry {
        assert!(start < data.len(), "write_file of nothing");
        self.file_op_free(ud);
        let len = u32::try_from(data.len() - start).unwrap_or(u32::MAX);
        let ptr = data[start..].as_ptr();
        // O_APPEND decides where the bytes go; -1 says "the file position", which it moves.
        let e = opcode::Write::new(types::Fd(file.as_raw_fd()), ptr, len)
            .offset(u64::MAX)
            .build()
            .user_data(ud.encode());
        self.file_ops.push(FileWrite {
            ud: ud.encode(),
            bytes: Some(SendVec {
                ud: ud.encode(),
                data,
                start,
            }),
            _file: file,
        });
        e
    }

    fn file_sync(&mut self, file: Arc<OwnedFd>, ud: UserData<K>) -> squeue::Entry {
        self.file_op_free(ud);
        let e = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(ud.encode());
        self.file_ops.push(FileWrite {
            ud: ud.encode(),
            bytes: None,
            _file: file,
        });
        e
    }

    fn file_op_free(&self, ud: UserData<K>) {
        assert!(
            self.file_ops.iter().all(|w| w.ud != ud.encode()),
            "two file operations of one user_data in flight"
        );
    }

    /// Installs direct descriptor `fixed` in the process's file table (O_CLOEXEC): the
    /// completion's result is the new fd, which the caller owns (to ask the socket what
    /// only a plain fd can be asked, e.g. its peer's address). 6.8+.
    pub fn install_fixed(&mut self, fixed: u32, ud: UserData<K>) -> io::Result<()> {
        let e = opcode::FixedFdInstall::new(types::Fixed(fixed), 0)
            .build()
            .user_data(ud.encode());
        self.installing.insert(ud.encode());
        // SAFETY: an install points to no memory.
        unsafe { self.push(&e) }
    }

    /// Reads the eventfd `fd` (8 bytes) into the ring's own counter. Several reads may be in
    /// flight (a server shard's stop and durability eventfds) and share it: its value is
    /// never read, an eventfd read only consumes the count.
    pub fn read_eventfd(&mut self, fd: RawFd, ud: UserData<K>) -> io::Result<()> {
        let ptr: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(types::Fd(fd), ptr.cast(), 8)
            .build()
            .user_data(ud.encode());
        // SAFETY: the counter is boxed in the ring, outlives every operation (the ring leaks
        // it if any is in flight at drop), and only the kernel writes it, whichever read.
        unsafe { self.push(&e) }
    }
}

/// The `user_data` of each step of a `socket_connect` chain.
pub struct ConnectSteps<K> {
    pub socket: UserData<K>,
    pub sockopt: UserData<K>,
    pub bind: UserData<K>,
    pub connect: UserData<K>,
}

impl<K> Drop for Ring<K> {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // Closing the ring cancels its requests asynchronously; memory they may touch is
            // leaked rather than freed under them. Only error paths get here.
            std::mem::forget(self.bufs.take());
            std::mem::forget(std::mem::take(&mut self.send_vecs));
            std::mem::forget(std::mem::take(&mut self.file_ops));
            std::mem::forget(std::mem::take(&mut self.regions));
            std::mem::forget(std::mem::take(&mut self.addrs));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        }
    }
}

/// Errors io_uring_enter returns that mean "call again": a signal, or completions that must
/// be reaped first (EBUSY: overflowed CQEs waiting).
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, OwnedFd};

    use super::*;
    use crate::sys;

    crate::uring::op_kinds! {
        enum Test {
            Read,
        }
    }

    /// An edge-triggered epoll set watching `fd` for input, as the group's.
    fn watch(fd: RawFd) -> OwnedFd {
        let ep = sys::epoll_create().unwrap();
        let events = (libc::EPOLLIN | libc::EPOLLET) as u32;
        sys::epoll_add(ep.as_raw_fd(), fd, events, 0).unwrap();
        ep
    }

    fn ready(ep: &OwnedFd, ms: i32) -> bool {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }];
        sys::epoll_wait(ep.as_raw_fd(), &mut ev, ms).unwrap() == 1
    }

    /// What a thread of several rings relies on (proactor/group.rs): deferred work signals
    /// the ring's eventfd before the ring's thread has entered; a muted eventfd stays quiet,
    /// also for what the ring's own enter posts, and unmuting says that work came meanwhile.
    #[test]
    fn deferred_work_signals_the_eventfd_and_muting_holds_it() {
        let notify = sys::eventfd().unwrap();
        let wake = sys::eventfd().unwrap();
        let mut ring = Ring::<Test>::new(&RingConfig {
            sq_entries: 8,
            cq_entries: 16,
            fixed_files: 1,
            bufs: None,
            batch_usec: 0,
            notify: Some(notify.as_raw_fd()),
        })
        .unwrap();
        let on_notify = watch(notify.as_raw_fd());
        let ud = UserData::new(Test::Read, 0, 0);
        let mut out = Vec::new();

        ring.read_eventfd(wake.as_raw_fd(), ud).unwrap();
        ring.submit().unwrap();
        assert!(!ready(&on_notify, 0), "nothing has happened yet");
        sys::eventfd_wake(wake.as_raw_fd()).unwrap();
        assert!(
            ready(&on_notify, 1000),
            "the read's completion is deferred work"
        );
        out.clear();
        ring.drain(&mut out);
        assert!(out.is_empty(), "posted only when the ring's thread enters");
        assert!(ring.has_work(), "IORING_SQ_TASKRUN says so");
        ring.mute();
        ring.submit().unwrap();
        ring.drain(&mut out);
        assert_eq!((out.len(), out[0].res), (1, 8));
        assert!(
            !ready(&on_notify, 0),
            "what the ring's own enter posts, muted, is quiet"
        );
        assert!(!ring.unmute());

        ring.read_eventfd(wake.as_raw_fd(), ud).unwrap();
        ring.submit().unwrap();
        ring.mute();
        sys::eventfd_wake(wake.as_raw_fd()).unwrap();
        assert!(!ready(&on_notify, 200), "muted: no signal");
        assert!(ring.unmute(), "so unmuting reports the work");
        ring.submit().unwrap();
        out.clear();
        ring.drain(&mut out);
        assert_eq!(out.len(), 1);
    }
}
