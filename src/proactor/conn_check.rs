//! A model of the kernel around one Proactor `Conn`, driven by arbitrary bytes (the
//! `conn_events` fuzz target and a proptest): each byte picks the next event the kernel or
//! the shard could deliver in the current state (data or the end of the multishot recv,
//! a send completing whole, short, failed or cancelled, a shortage of buffers, a drain,
//! an abort, a timeout). The model checks, at every step, what the ring relies on:
//! - a buffer is recycled or sent only while the connection holds it, and every buffer it
//!   was given comes back exactly once;
//! - at most one send is in flight; no recv is armed while one is;
//! - close comes once, after every operation has ended, and nothing comes after it; the
//!   write side is shut at most once, and only once nothing more will be sent;
//! - what is sent is a prefix of the right answer (the echo of what arrived, or what one
//!   HTTP session fed the same bytes answers);
//! - once the events stop and in-flight operations finish, the connection closes (after an
//!   abort, if it was left open): nothing wedges.

use std::collections::BTreeSet;

use super::conn::{Conn, Effect, Received};
use crate::proto::http;
use crate::server::core::ProtoEnv;

/// Provided buffers in the model's ring: few, so that it runs dry.
const BUFS: u16 = 4;
const BUF_SIZE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelRecv {
    Idle,
    Armed { cancel: bool },
}

#[derive(Debug)]
enum Send {
    Buf { bid: u16, off: u32, len: u32 },
    Vec { data: Vec<u8>, start: usize },
}

struct Kernel {
    bufs: [[u8; BUF_SIZE]; BUFS as usize],
    free: Vec<u16>,
    held: BTreeSet<u16>,
    recv: KernelRecv,
    send: Option<Send>,
    send_cancel: bool,
    waiting: bool,
    failed: bool,
    shut: bool,
    closed: bool,
    sent: Vec<u8>,
    env: ProtoEnv,
}

impl Kernel {
    fn alive(&self, what: &str) {
        assert!(!self.closed, "{what} after close");
    }
}

impl Kernel {
    /// Carries out what the connection asked, checking each effect against the ring's rules.
    fn apply(&mut self, effects: &mut Vec<Effect>) {
        for e in effects.drain(..) {
            match e {
                Effect::SendBuf { bid, off, len } => {
                    self.alive("send_buf");
                    assert!(!self.shut, "send after shutdown");
                    assert!(self.held.contains(&bid), "send from buffer {bid} not held");
                    assert!(self.send.is_none(), "two sends in flight");
                    assert!(
                        len > 0 && (off + len) as usize <= BUF_SIZE,
                        "send {off}+{len}"
                    );
                    self.send = Some(Send::Buf { bid, off, len });
                }
                Effect::SendVec { data, start } => {
                    self.alive("send_vec");
                    assert!(!self.shut, "send after shutdown");
                    assert!(self.send.is_none(), "two sends in flight");
                    assert!(start < data.len(), "empty send");
                    self.send = Some(Send::Vec { data, start });
                }
                Effect::Recycle(bid) => {
                    assert!(self.held.remove(&bid), "recycle of buffer {bid} not held");
                    self.free.push(bid);
                }
                Effect::ArmRecv => {
                    self.alive("arm_recv");
                    assert_eq!(self.recv, KernelRecv::Idle, "recv armed twice");
                    self.recv = KernelRecv::Armed { cancel: false };
                }
                Effect::WaitBuffers => {
                    self.alive("wait_buffers");
                    self.waiting = true;
                }
                Effect::CancelRecv => {
                    self.alive("cancel_recv");
                    if let KernelRecv::Armed { cancel } = &mut self.recv {
                        *cancel = true;
                    }
                }
                Effect::CancelSend { vec } => {
                    self.alive("cancel_send");
                    match &self.send {
                        Some(Send::Vec { .. }) => assert!(vec, "cancel of the wrong send kind"),
                        Some(Send::Buf { .. }) => assert!(!vec, "cancel of the wrong send kind"),
                        None => {}
                    }
                    self.send_cancel = true;
                }
                Effect::Close => {
                    self.alive("close");
                    assert!(self.send.is_none(), "close with a send in flight");
                    assert_eq!(self.recv, KernelRecv::Idle, "close with a recv armed");
                    self.closed = true;
                }
                Effect::ShutdownWrite => {
                    self.alive("shutdown_write");
                    assert!(self.send.is_none(), "shutdown with a send in flight");
                    assert!(!self.shut, "shutdown twice");
                    self.shut = true;
                }
                Effect::Failed => {
                    self.alive("failed");
                    assert!(!self.failed, "an error counted twice for one connection");
                    self.failed = true;
                }
                Effect::ShortSend
                | Effect::Answered(_)
                | Effect::Hold(_)
                | Effect::Reading(_)
                | Effect::Linger => {}
            }
        }
    }

    /// A recv completion: the end of the multishot (`res`, no buffer), fed to `conn`.
    fn recv_end(&mut self, conn: &mut Conn, res: i32, fx: &mut Vec<Effect>) {
        let r = Received {
            res,
            buf: None,
            more: false,
        };
        conn.on_recv(r, Some(&self.env), fx);
        self.apply(fx);
    }

    fn rearm(&mut self, conn: &mut Conn, fx: &mut Vec<Effect>) {
        conn.rearm(fx);
        self.apply(fx);
    }
}

/// Plays the events `data` describes; panics on a broken rule (see the module doc).
/// Returns the bytes sent and the right answer to everything delivered.
pub fn run(data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return (Vec::new(), Vec::new());
    };
    let is_http = mode & 1 == 1;
    let mut k = Kernel {
        bufs: [[0; BUF_SIZE]; BUFS as usize],
        free: (0..BUFS).rev().collect(),
        held: BTreeSet::new(),
        recv: KernelRecv::Idle,
        send: None,
        send_cancel: false,
        waiting: false,
        failed: false,
        shut: false,
        closed: false,
        sent: Vec::new(),
        env: ProtoEnv {
            limits: http::Limits {
                max_header_bytes: 64 + u32::from(mode >> 1),
                max_body_bytes: u64::from(mode),
            },
            date: http::Date::at(784_111_777),
            now: std::time::Instant::now(),
            redis: None,
        },
    };
    // The right answer to everything delivered, and a counter for echo payloads.
    let mut expected = Vec::new();
    let mut reference = http::Session::new();
    let mut fill = 0u8;
    let mut fx = Vec::new();
    let mut conn = Conn::accepted(1, 1, is_http.then_some(&k.env), &mut fx);
    k.apply(&mut fx);
    let mut take = |n: usize| -> &[u8] {
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        a
    };
    let mut steps = 0;
    while let Some(&op) = take(1).first() {
        let arg = take(1).first().copied().unwrap_or(0);
        steps += 1;
        if k.closed || steps > 10_000 {
            break;
        }
        match op % 8 {
            // Data (or, with no buffer free, the end of the recv for lack of them).
            0 | 1 if matches!(k.recv, KernelRecv::Armed { .. }) => {
                let Some(bid) = k.free.pop() else {
                    k.recv = KernelRecv::Idle;
                    k.recv_end(&mut conn, -libc::ENOBUFS, &mut fx);
                    continue;
                };
                let more = arg & 0x80 == 0;
                let len = usize::from(arg & 0x3F).clamp(1, BUF_SIZE);
                let chunk = &mut k.bufs[bid as usize][..len];
                if is_http {
                    let input = take(len);
                    chunk[..input.len()].copy_from_slice(input);
                    chunk[input.len()..].fill(b'\n');
                    reference.on_input(chunk, &k.env.limits, &k.env.date, &mut expected);
                } else {
                    for b in chunk.iter_mut() {
                        *b = fill;
                        fill = fill.wrapping_add(1);
                    }
                    expected.extend_from_slice(chunk);
                }
                k.held.insert(bid);
                if !more {
                    k.recv = KernelRecv::Idle;
                }
                let r = Received {
                    res: len as i32,
                    buf: Some((bid, &k.bufs[bid as usize][..len])),
                    more,
                };
                conn.on_recv(r, Some(&k.env), &mut fx);
                k.apply(&mut fx);
            }
            // The recv ends: EOF, a reset, or the cancel asked for.
            2 if matches!(k.recv, KernelRecv::Armed { .. }) => {
                let KernelRecv::Armed { cancel } = k.recv else {
                    unreachable!()
                };
                let res = match (cancel, arg % 3) {
                    (true, _) => -libc::ECANCELED,
                    (false, 0) => 0,
                    (false, 1) => -libc::ECONNRESET,
                    (false, _) => -libc::ENOBUFS,
                };
                k.recv = KernelRecv::Idle;
                k.recv_end(&mut conn, res, &mut fx);
            }
            3 if k.send.is_some() => complete_send(&mut conn, &mut k, arg, &mut fx),
            4 if k.waiting => {
                k.waiting = false;
                k.rearm(&mut conn, &mut fx);
            }
            5 => {
                conn.drain(&mut fx);
                k.apply(&mut fx);
            }
            6 if arg % 4 == 0 => {
                conn.abort(&mut fx);
                k.apply(&mut fx);
            }
            7 if arg % 4 == 0 => {
                if is_http {
                    reference.time_out(&k.env.date, &mut expected, None);
                }
                conn.time_out(Some(&k.env), &mut fx);
                k.apply(&mut fx);
            }
            _ => {}
        }
        assert!(
            expected.starts_with(&k.sent),
            "sent bytes are not a prefix of the right answer"
        );
    }
    // The events stop: finish what is in flight, let the peer go, and it must close.
    let mut aborted = false;
    for _ in 0..1000 {
        if k.closed {
            break;
        }
        if k.send.is_some() {
            complete_send(&mut conn, &mut k, 0, &mut fx);
        } else if let KernelRecv::Armed { cancel } = k.recv {
            k.recv = KernelRecv::Idle;
            k.recv_end(
                &mut conn,
                if cancel { -libc::ECANCELED } else { 0 },
                &mut fx,
            );
        } else if k.waiting {
            k.waiting = false;
            k.rearm(&mut conn, &mut fx);
        } else {
            assert!(
                !aborted,
                "wedged: nothing in flight, aborted, and not closed"
            );
            aborted = true;
            conn.abort(&mut fx);
            k.apply(&mut fx);
        }
    }
    assert!(k.closed, "never closed");
    assert!(k.held.is_empty(), "buffers never returned: {:?}", k.held);
    assert!(expected.starts_with(&k.sent));
    (k.sent, expected)
}

/// Completes the send in flight: whole, short, failed, or cancelled if asked (`arg`).
fn complete_send(conn: &mut Conn, k: &mut Kernel, arg: u8, fx: &mut Vec<Effect>) {
    let send = k.send.take().expect("a send is in flight");
    let cancelled = std::mem::take(&mut k.send_cancel) && arg % 2 == 1;
    let avail = match &send {
        Send::Buf { len, .. } => *len as usize,
        Send::Vec { data, start } => data.len() - start,
    };
    let res = if cancelled {
        -libc::ECANCELED
    } else {
        match arg % 4 {
            0 | 1 => avail as i32,
            2 => (avail / 2).max(1) as i32,
            _ => -libc::ECONNRESET,
        }
    };
    let n = res.max(0) as usize;
    match send {
        Send::Buf { bid, off, .. } => {
            let from = off as usize;
            k.sent
                .extend_from_slice(&k.bufs[bid as usize][from..from + n]);
            conn.on_sent(res, None, fx);
        }
        Send::Vec { data, start } => {
            k.sent.extend_from_slice(&data[start..start + n]);
            conn.on_sent(res, Some((data, start)), fx);
        }
    }
    k.apply(fx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_event_sequences_keep_every_rule(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            run(&data);
        }
    }

    #[test]
    fn a_plain_echo_and_a_plain_request_close_cleanly() {
        // Echo: data, data, send whole, send whole, EOF.
        let (sent, expected) = run(&[0, 0, 10, 0, 20, 3, 0, 3, 0, 2, 0]);
        assert_eq!(sent.len(), 30);
        assert_eq!(sent, expected);
        // HTTP: one request in one buffer, its answer sent, EOF.
        let mut http = vec![1, 0, 37];
        http.extend_from_slice(b"GET /plaintext HTTP/1.1\r\nHost: a\r\n\r\n");
        http.extend_from_slice(&[3, 0, 2, 0]);
        let (sent, expected) = run(&http);
        assert!(sent.starts_with(b"HTTP/1.1 200 OK\r\n"), "{sent:?}");
        assert_eq!(sent, expected);
    }
}
