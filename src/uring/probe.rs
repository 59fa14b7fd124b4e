//! What the engines need of the kernel, found when a ring is built and reported by name
//! ("needs Linux 6.1+ (IORING_SETUP_DEFER_TASKRUN)") rather than as a bare errno.

use std::io;

use io_uring::{IoUring, Probe, opcode};

/// A kernel feature beyond what every ring needs (Linux 6.1: SINGLE_ISSUER, DEFER_TASKRUN,
/// multishot accept and recv, provided-buffer rings, SOCKET into direct descriptors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Batched waits: io_uring_enter's minimum wait (`--batch-usec`).
    MinTimeout,
    /// BIND of a direct socket (`uring-load --sources`).
    Bind,
}

impl Need {
    pub fn describe(self) -> &'static str {
        match self {
            Need::MinTimeout => "Linux 6.12+ (IORING_FEAT_MIN_TIMEOUT)",
            Need::Bind => "Linux 6.11+ (IORING_OP_BIND)",
        }
    }

    fn present(self, uring: &IoUring) -> io::Result<bool> {
        Ok(match self {
            Need::MinTimeout => uring.params().is_feature_min_timeout(),
            Need::Bind => {
                let mut probe = Probe::new();
                uring.submitter().register_probe(&mut probe)?;
                probe.is_supported(opcode::Bind::CODE)
            }
        })
    }
}

/// Fails with "`what` needs ..." unless the kernel behind `uring` has `need`.
pub fn require(uring: &IoUring, need: Need, what: &str) -> io::Result<()> {
    if need.present(uring)? {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} needs {}", need.describe()),
    ))
}

/// The error of a failed io_uring_setup, naming what is missing.
pub fn setup_error(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring is not in this kernel (CONFIG_IO_URING); needs Linux 6.1+",
        Some(libc::EPERM) => {
            "io_uring is not allowed here (sysctl kernel.io_uring_disabled, or a seccomp filter)"
        }
        // Unknown setup flags are EINVAL: the newest this ring asks for is DEFER_TASKRUN.
        Some(libc::EINVAL) => "needs Linux 6.1+ (IORING_SETUP_DEFER_TASKRUN)",
        _ => return e,
    };
    io::Error::new(e.kind(), format!("creating an io_uring: {why} ({e})"))
}

/// Whether this kernel has `need` (tests skip, with a message, where it does not).
pub fn has(need: Need) -> bool {
    IoUring::new(2)
        .and_then(|uring| need.present(&uring))
        .unwrap_or(false)
}
