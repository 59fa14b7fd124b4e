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

use super::conn::{Conn, ConnIo};
use crate::proto::http;

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
    limits: http::Limits,
    date: http::Date,
}

impl Kernel {
    fn alive(&self, what: &str) {
        assert!(!self.closed, "{what} after close");
    }
}

impl ConnIo for Kernel {
    fn send_buf(&mut self, bid: u16, off: u32, len: u32) {
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

    fn send_vec(&mut self, data: Vec<u8>, start: usize) {
        self.alive("send_vec");
        assert!(!self.shut, "send after shutdown");
        assert!(self.send.is_none(), "two sends in flight");
        assert!(start < data.len(), "empty send");
        self.send = Some(Send::Vec { data, start });
    }

    fn buf_bytes(&self, bid: u16, len: u32) -> &[u8] {
        assert!(self.held.contains(&bid), "read of buffer {bid} not held");
        &self.bufs[bid as usize][..len as usize]
    }

    fn recycle(&mut self, bid: u16) {
        assert!(self.held.remove(&bid), "recycle of buffer {bid} not held");
        self.free.push(bid);
    }

    fn arm_recv(&mut self) {
        self.alive("arm_recv");
        assert_eq!(self.recv, KernelRecv::Idle, "recv armed twice");
        self.recv = KernelRecv::Armed { cancel: false };
    }

    fn wait_buffers(&mut self) {
        self.alive("wait_buffers");
        self.waiting = true;
    }

    fn cancel_recv(&mut self) {
        self.alive("cancel_recv");
        if let KernelRecv::Armed { cancel } = &mut self.recv {
            *cancel = true;
        }
    }

    fn cancel_send(&mut self, vec: bool) {
        self.alive("cancel_send");
        match &self.send {
            Some(Send::Vec { .. }) => assert!(vec, "cancel of the wrong send kind"),
            Some(Send::Buf { .. }) => assert!(!vec, "cancel of the wrong send kind"),
            None => {}
        }
        self.send_cancel = true;
    }

    fn close(&mut self) {
        self.alive("close");
        assert!(self.send.is_none(), "close with a send in flight");
        assert_eq!(self.recv, KernelRecv::Idle, "close with a recv armed");
        self.closed = true;
    }

    fn short_send(&mut self) {}

    fn http_env(&self) -> (&http::Limits, &http::Date) {
        (&self.limits, &self.date)
    }

    fn answered(&mut self, _n: u32) {}

    fn shutdown_write(&mut self) {
        self.alive("shutdown_write");
        assert!(self.send.is_none(), "shutdown with a send in flight");
        assert!(!self.shut, "shutdown twice");
        self.shut = true;
    }

    fn failed(&mut self) {
        self.alive("failed");
        assert!(!self.failed, "an error counted twice for one connection");
        self.failed = true;
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
        limits: http::Limits {
            max_header_bytes: 64 + u32::from(mode >> 1),
            max_body_bytes: u64::from(mode),
        },
        date: http::Date::at(784_111_777),
    };
    // The right answer to everything delivered, and a counter for echo payloads.
    let mut expected = Vec::new();
    let mut reference = http::Session::new();
    let mut fill = 0u8;
    let mut conn = Conn::accepted(1, 1, is_http, &mut k);
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
                    conn.on_recv_end(-libc::ENOBUFS, &mut k);
                    continue;
                };
                let more = arg & 0x80 == 0;
                let len = usize::from(arg & 0x3F).clamp(1, BUF_SIZE);
                let chunk = &mut k.bufs[bid as usize][..len];
                if is_http {
                    let input = take(len);
                    chunk[..input.len()].copy_from_slice(input);
                    chunk[input.len()..].fill(b'\n');
                    reference.on_input(chunk, &k.limits, &k.date, &mut expected);
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
                conn.on_data(bid, len as u32, more, &mut k);
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
                conn.on_recv_end(res, &mut k);
            }
            3 if k.send.is_some() => complete_send(&mut conn, &mut k, arg),
            4 if k.waiting => {
                k.waiting = false;
                conn.rearm(&mut k);
            }
            5 => conn.drain(&mut k),
            6 if arg % 4 == 0 => conn.abort(&mut k),
            7 if arg % 4 == 0 => {
                if is_http {
                    reference.time_out(&k.date, &mut expected);
                }
                conn.time_out(&mut k);
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
            complete_send(&mut conn, &mut k, 0);
        } else if let KernelRecv::Armed { cancel } = k.recv {
            k.recv = KernelRecv::Idle;
            conn.on_recv_end(if cancel { -libc::ECANCELED } else { 0 }, &mut k);
        } else if k.waiting {
            k.waiting = false;
            conn.rearm(&mut k);
        } else {
            assert!(
                !aborted,
                "wedged: nothing in flight, aborted, and not closed"
            );
            aborted = true;
            conn.abort(&mut k);
        }
    }
    assert!(k.closed, "never closed");
    assert!(k.held.is_empty(), "buffers never returned: {:?}", k.held);
    assert!(expected.starts_with(&k.sent));
    (k.sent, expected)
}

/// Completes the send in flight: whole, short, failed, or cancelled if asked (`arg`).
fn complete_send(conn: &mut Conn, k: &mut Kernel, arg: u8) {
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
            conn.on_sent_buf(res, k);
        }
        Send::Vec { data, start } => {
            k.sent.extend_from_slice(&data[start..start + n]);
            conn.on_sent_vec(res, data, start, k);
        }
    }
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
