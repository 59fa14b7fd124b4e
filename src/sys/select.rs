//! select(2) and its fd_set, for the select model. An fd_set is a bit array of
//! FD_SETSIZE (1024) bits: FD_SET of a larger fd would write past its end, so `FdSet`
//! checks every fd against `fits` and the model refuses the connections that do not.

use std::io;
use std::mem;
use std::os::fd::RawFd;

use super::syscall;

/// Whether `fd` can be put in an fd_set: 0 <= fd < FD_SETSIZE.
pub fn fits(fd: RawFd) -> bool {
    usize::try_from(fd).is_ok_and(|fd| fd < libc::FD_SETSIZE)
}

/// A set of fds below FD_SETSIZE, as select(2) reads and rewrites it.
pub struct FdSet(libc::fd_set);

impl FdSet {
    /// The empty set.
    pub fn new() -> FdSet {
        // SAFETY: fd_set is a plain bit array; all-zero is a valid value, and FD_ZERO
        // makes it the empty set whatever the libc's layout.
        let mut set: libc::fd_set = unsafe { mem::zeroed() };
        // SAFETY: the pointer is to the live local fd_set above.
        unsafe { libc::FD_ZERO(&mut set) };
        FdSet(set)
    }

    /// Empties the set (FD_ZERO).
    pub fn clear(&mut self) {
        // SAFETY: the pointer is to this live fd_set, borrowed mutably.
        unsafe { libc::FD_ZERO(&mut self.0) };
    }

    /// Adds `fd` (FD_SET). Panics unless it `fits`: a caller that passed a larger fd would
    /// have had the bit written past the set's end.
    pub fn insert(&mut self, fd: RawFd) {
        assert!(fits(fd), "fd {fd} is beyond FD_SETSIZE");
        // SAFETY: `fd` is in 0..FD_SETSIZE (checked above), so its bit lies inside the set;
        // the pointer is to this live fd_set, borrowed mutably.
        unsafe { libc::FD_SET(fd, &mut self.0) };
    }

    /// Whether `fd` is in the set (FD_ISSET); an fd that does not `fit` never is.
    pub fn contains(&self, fd: RawFd) -> bool {
        // SAFETY: `fd` is in 0..FD_SETSIZE (checked first), so its bit lies inside the set;
        // the pointer is to this live fd_set, which FD_ISSET only reads.
        fits(fd) && unsafe { libc::FD_ISSET(fd, &self.0) }
    }
}

impl Default for FdSet {
    fn default() -> FdSet {
        FdSet::new()
    }
}

/// select(2) on the fds below `nfds` (the highest fd in the sets plus one), with no
/// timeout: waits until one in `read` is readable or one in `write` is writable, and leaves
/// in each set only the ready ones. Returns how many are ready; EINTR is 0 and empties both
/// sets (the kernel may have rewritten them partway, Linux's select(2) says they are then
/// unspecified).
pub fn select(nfds: usize, read: &mut FdSet, write: &mut FdSet) -> io::Result<usize> {
    assert!(nfds <= libc::FD_SETSIZE, "select on {nfds} fds");
    // SAFETY: both pointers are to live fd_sets borrowed mutably, of FD_SETSIZE bits, and
    // `nfds` is at most FD_SETSIZE (checked above), so the kernel reads and writes only
    // inside them; null except-set and timeout pointers are allowed (no timeout).
    match unsafe {
        syscall!(select(
            nfds as libc::c_int,
            &mut read.0,
            &mut write.0,
            std::ptr::null_mut(),
            std::ptr::null_mut()
        ))
    } {
        Ok(n) => Ok(n as usize),
        Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
            read.clear();
            write.clear();
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_what_was_put_in_and_nothing_beyond_fd_setsize() {
        let mut set = FdSet::new();
        for fd in [0, 63, 64, 1023] {
            set.insert(fd);
        }
        assert!(set.contains(0) && set.contains(63) && set.contains(64) && set.contains(1023));
        assert!(!set.contains(1) && !set.contains(65) && !set.contains(1022));
        assert!(!set.contains(1024) && !set.contains(-1));
        assert!(fits(1023) && !fits(1024) && !fits(-1));
        set.clear();
        assert!(!set.contains(0) && !set.contains(1023));
    }

    #[test]
    #[should_panic(expected = "beyond FD_SETSIZE")]
    fn inserting_fd_setsize_panics() {
        FdSet::new().insert(1024);
    }
}
