//! Dropping root: the user and group a server runs as once its listeners (and PID file)
//! are set up as root (`--user NAME[:GROUP]`).

use std::ffi::CString;
use std::io;
use std::path::Path;

use super::syscall;

/// Who to become: a user's uid and the gid to run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// getpwnam_r/getgrnam_r's scratch: larger than any entry here.
const ENTRY_BUF: usize = 16 * 1024;

/// The uid and primary gid of user `name`; None if there is no such user.
pub fn user(name: &str) -> io::Result<Option<Ids>> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value that
    // getpwnam_r only writes.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; ENTRY_BUF];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to live memory of ours of the stated size (the name is
    // NUL-terminated); the strings getpwnam_r points `pw` at live in `buf`, which outlives
    // the only use of them (none: only the ids are read).
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    match (rc, found.is_null()) {
        (0, true) => Ok(None),
        (0, false) => Ok(Some(Ids {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })),
        (e, _) => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The gid of group `name`; None if there is no such group.
pub fn group(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: group is plain data; all-zero is a valid value that getgrnam_r only writes.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; ENTRY_BUF];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in `user`: live buffers of the stated sizes, only the gid is read.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    match (rc, found.is_null()) {
        (0, true) => Ok(None),
        (0, false) => Ok(Some(gr.gr_gid)),
        (e, _) => Err(io::Error::from_raw_os_error(e)),
    }
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    unsafe { libc::geteuid() }
}

/// Gives `path` to `ids` (so that the server can remove it once it runs as them).
pub fn chown(path: &Path, ids: Ids) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(ids.uid), Some(ids.gid))
}

/// Becomes `ids` for good, every thread (glibc applies set*id to all of a process's
/// threads): the supplementary groups are cleared to the one group, then the gid, then the
/// uid; then checks that every id took and that root cannot be taken back.
pub fn become_ids(ids: Ids) -> io::Result<()> {
    let groups = [ids.gid as libc::gid_t];
    // SAFETY: the pointer is to a live array of the stated length, which setgroups reads.
    unsafe { syscall!(setgroups(1, groups.as_ptr())) }?;
    // SAFETY: setresgid/setresuid take plain ids.
    unsafe { syscall!(setresgid(ids.gid, ids.gid, ids.gid)) }?;
    // SAFETY: as above.
    unsafe { syscall!(setresuid(ids.uid, ids.uid, ids.uid)) }?;
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: the pointers are to live locals that getresuid writes.
    unsafe { syscall!(getresuid(&mut r, &mut e, &mut s)) }?;
    let (mut gr, mut ge, mut gs) = (0, 0, 0);
    // SAFETY: as above.
    unsafe { syscall!(getresgid(&mut gr, &mut ge, &mut gs)) }?;
    // SAFETY: setuid takes a plain id; it must fail now.
    let regained = ids.uid != 0 && unsafe { libc::setuid(0) } == 0;
    if [r, e, s] != [ids.uid; 3] || [gr, ge, gs] != [ids.gid; 3] || regained {
        return Err(io::Error::other(format!(
            "the ids did not take: uid {r}/{e}/{s}, gid {gr}/{ge}/{gs}{}",
            if regained {
                ", and root could be taken back"
            } else {
                ""
            }
        )));
    }
    Ok(())
}
