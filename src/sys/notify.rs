//! systemd's service notification protocol (sd_notify(3)): a unit of `Type=notify` is ready
//! when the service sends `READY=1` to the datagram socket named in `$NOTIFY_SOCKET` (a
//! path, or `@name` in the abstract namespace); `STATUS=` is shown by `systemctl status`,
//! `STOPPING=1` says a stop has begun. Without `$NOTIFY_SOCKET` there is nothing to do.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

pub struct Notify {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notify {
    /// The notifier `$NOTIFY_SOCKET` names; None when it is not set. A socket that cannot
    /// be used is said once on stderr by `name` and then ignored: systemd would only time
    /// the start out, which says more than failing here.
    pub fn from_env(name: &str) -> Option<Notify> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let made = match bytes.strip_prefix(b"@") {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
            None => SocketAddr::from_pathname(&path),
        }
        .and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match made {
            Ok((sock, addr)) => Some(Notify { sock, addr }),
            Err(e) => {
                let path = path.to_string_lossy();
                eprintln!("{name}: NOTIFY_SOCKET {path}: {e}; not notifying");
                None
            }
        }
    }

    /// Sends one message (lines of `KEY=value`). A failure is ignored: the manager may be
    /// gone, and serving goes on.
    pub fn send(&self, msg: &str) {
        let _: io::Result<usize> = self.sock.send_to_addr(msg.as_bytes(), &self.addr);
    }
}
