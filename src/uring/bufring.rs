//! The provided-buffer ring (kernel 5.19+): `count` buffers of `size` bytes that the kernel
//! picks from for multishot recvs, and that are given back one by one as soon as their bytes
//! have been sent (or copied). Owns the ring entries and the buffer memory.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;
use io_uring::types::BufRingEntry;

/// An anonymous private mapping, page-aligned, zeroed and populated, unmapped on drop.
///
/// Populated (MAP_POPULATE) so that the kernel's first write into each buffer does not take a
/// page fault in the middle of a recv: with 64 rings of 2,048 buffers a side, those faults
/// slowed the first pass over a million connections about threefold (bench/results/c1000k-ab-*).
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping touches no existing memory; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, and this is the only unmap. The
        // owner (Ring) drops a mapping only once no operation that could touch it is in flight.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct BufRing {
    entries: Mapping,
    mem: Mapping,
    count: u16,
    size: u32,
    tail: u16,
    bgid: u16,
    /// Buffers the kernel has handed us and we have not given back: their count, and one
    /// bit per buffer, checked on every use so that a buffer is never read, sent or given back
    /// unless we hold it (a buffer given back twice could be filled by two recvs at once).
    held: usize,
    held_bits: Vec<u64>,
}

impl BufRing {
    /// Registers a ring of `count` (a power of two, at most 32768) buffers of `size` bytes as
    /// buffer group `bgid`, all of them available to the kernel.
    pub fn new(submitter: &Submitter<'_>, bgid: u16, count: u16, size: u32) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768",
            ));
        }
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let mem = Mapping::new(usize::from(count) * size as usize)?;
        // SAFETY: `entries` is page-aligned, sized for `count` entries, and lives as long as
        // this BufRing, which its owning Ring drops only after the io_uring itself.
        unsafe {
            submitter.register_buf_ring_with_flags(entries.ptr.as_ptr() as u64, count, bgid, 0)?
        };
        let mut ring = BufRing {
            entries,
            mem,
            count,
            size,
            tail: 0,
            bgid,
            held: usize::from(count),
            held_bits: vec![u64::MAX; usize::from(count).div_ceil(64)],
        };
        for bid in 0..count {
            ring.recycle(bid);
        }
        Ok(ring)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Buffers the kernel can pick from now.
    pub fn available(&self) -> usize {
        usize::from(self.count) - self.held
    }

    fn is_held(&self, bid: u16) -> bool {
        self.held_bits[usize::from(bid / 64)] & (1 << (bid % 64)) != 0
    }

    fn set_held(&mut self, bid: u16, held: bool) {
        let word = &mut self.held_bits[usize::from(bid / 64)];
        if held {
            *word |= 1 << (bid % 64);
        } else {
            *word &= !(1 << (bid % 64));
        }
    }

    /// Records that a completion handed buffer `bid` to us.
    pub fn taken(&mut self, bid: u16) {
        assert!(
            bid < self.count && !self.is_held(bid),
            "buffer {bid} handed out twice"
        );
        self.set_held(bid, true);
        self.held += 1;
    }

    /// The first `len` bytes of buffer `bid`, which a completion handed to us.
    pub fn bytes(&self, bid: u16, len: u32) -> &[u8] {
        assert!(
            bid < self.count && len <= self.size,
            "buffer {bid} len {len} out of range"
        );
        assert!(self.is_held(bid), "buffer {bid} is in the kernel's hands");
        let start = usize::from(bid) * self.size as usize;
        // SAFETY: the range lies inside `mem` (checked above); the kernel wrote these bytes
        // before posting the CQE that handed us `bid`, and will not write the buffer again
        // until `recycle(bid)` puts it back in the ring.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr().add(start), len as usize) }
    }

    /// Address of byte `off` of buffer `bid`, for a send the Ring submits.
    pub(super) fn addr(&self, bid: u16, off: u32, len: u32) -> *const u8 {
        self.bytes(bid, off + len)[off as usize..].as_ptr()
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        let addr = self.bytes(bid, 0).as_ptr() as u64; // asserts that we hold `bid`
        self.set_held(bid, false);
        self.held -= 1;
        let mask = self.count - 1;
        let base = self.entries.ptr.as_ptr().cast::<BufRingEntry>();
        // struct io_uring_buf (uapi): addr u64 at 0, len u32 at 8, bid u16 at 12, resv u16 at
        // 14; entry 0's resv is the ring's tail, so the entry is written field by field.
        const _: () = assert!(std::mem::size_of::<BufRingEntry>() == 16);
        // SAFETY: `tail & mask` < count, so the slot lies inside the `entries` mapping, which
        // is page-aligned (so every field is aligned). At most `count` buffers are ever in the
        // ring (each bid once: the held bits), so the kernel, which reads only from its head
        // up to the published tail, is not reading this slot. Raw pointers, no references:
        // entry 0's resv (the tail) is never touched here.
        unsafe {
            let slot = base.add(usize::from(self.tail & mask)).cast::<u8>();
            slot.cast::<u64>().write(addr);
            slot.add(8).cast::<u32>().write(self.size);
            slot.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays entry 0's reserved field in the shared mapping (the
        // io_uring_buf_ring layout); it is naturally aligned, and AtomicU16 has u16's layout.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(base).cast_mut()) };
        // Release: the entry written above must be visible before the kernel sees the tail.
        tail.store(self.tail, Ordering::Release);
    }
}
