//! Per-shard connection deadlines: a hashed timing wheel keyed by connection slot.
//!
//! Each connection has at most one node in the wheel, linked into the bucket of the tick at
//! which it must next be looked at, and four deadlines: idle (pushed back by every byte
//! either way), header (set when an HTTP request head begins, cleared when it ends), body
//! (set when a request body begins, pushed back by every byte received, cleared when it
//! ends: nginx's client_body_timeout) and send (set when output is owed, pushed back by
//! every byte sent, cleared when none is owed: nginx's send_timeout). Progress only writes
//! the new deadlines into the node (no relinking); when the bucket comes round, a node whose
//! deadlines have moved on is relinked for the earliest, so a busy connection costs one
//! relink per timeout period, not one per request. A deadline set earlier than the node's
//! bucket (a header deadline, say) relinks at once. Every operation is O(1); a clock tick
//! visits one bucket; nothing ever scans all connections.
//!
//! Deadlines are rounded up to whole ticks and never fire early: a timeout of T fires
//! between T and T + `TICK` after the event that set it (plus however late the shard wakes).

use std::time::{Duration, Instant};

use crate::proto::http::Reading;

/// HTTP: the longest a lingering close lasts (the server has sent its last answer, shut its
/// write side, and reads and discards until the peer's EOF).
pub const LINGER: Duration = Duration::from_secs(5);
/// The wheel's resolution.
pub const TICK: Duration = Duration::from_millis(100);
/// Buckets in the wheel (a power of two): 102.4 s of ticks. A deadline further away sits in
/// the last bucket and is relinked each time round.
const SLOTS: u32 = 1024;
const NIL: u32 = u32::MAX;
/// A deadline that is not set, or a node that is not linked.
const NEVER: u32 = u32::MAX;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No progress either way for the idle timeout.
    Idle,
    /// A request head was begun and not finished within the header timeout.
    Header,
    /// A request body stalled: no byte of it for the body timeout.
    Body,
    /// Output was owed and the peer took none of it for the send timeout.
    Send,
    /// A lingering close (or the wait for a 408 to be taken) ran out.
    Linger,
}

/// The timeouts a shard enforces; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub header: Option<Duration>,
    pub body: Option<Duration>,
    pub send: Option<Duration>,
    /// The longest a lingering close may last, whatever the peer sends.
    pub linger: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    prev: u32,
    next: u32,
    /// The tick of the bucket the node is linked in; NEVER when unlinked.
    at: u32,
    idle_due: u32,
    head_due: u32,
    body_due: u32,
    send_due: u32,
    /// Started and neither expired nor stopped.
    live: bool,
    /// In `linger`: progress no longer pushes the deadline back.
    lingering: bool,
}

const UNLINKED: Node = Node {
    prev: NIL,
    next: NIL,
    at: NEVER,
    idle_due: NEVER,
    head_due: NEVER,
    body_due: NEVER,
    send_due: NEVER,
    live: false,
    lingering: false,
};

impl Node {
    fn due(&self) -> u32 {
        self.idle_due
            .min(self.head_due)
            .min(self.body_due)
            .min(self.send_due)
    }
}

#[derive(Debug)]
pub struct Wheel {
    epoch: Instant,
    /// The current tick, as of the last `set_clock`: deadlines count from it.
    clock: u32,
    /// The last tick whose bucket has been visited.
    now: u32,
    /// Timeouts in ticks, rounded up, plus one so that they never fire early; 0 is off.
    idle: u32,
    header: u32,
    body: u32,
    send: u32,
    linger: u32,
    heads: Vec<u32>,
    /// Indexed by connection slot.
    nodes: Vec<Node>,
    linked: usize,
}

fn ticks(d: Option<Duration>) -> u32 {
    match d {
        None => 0,
        Some(d) => {
            let n = d.as_nanos().div_ceil(TICK.as_nanos());
            u32::try_from(n + 1).unwrap_or(u32::MAX / 2)
        }
    }
}

impl Wheel {
    pub fn new(timeouts: Timeouts, now: Instant) -> Wheel {
        let mut w = Wheel {
            epoch: now,
            clock: 0,
            now: 0,
            idle: 0,
            header: 0,
            body: 0,
            send: 0,
            linger: 0,
            heads: Vec::new(),
            nodes: Vec::new(),
            linked: 0,
        };
        w.set_timeouts(timeouts);
        w
    }

    fn on(&self) -> bool {
        !self.heads.is_empty()
    }

    /// New timeouts (SIGHUP), for the deadlines set from now on: a connection's idle
    /// deadline takes the new length at its next progress, a header deadline at its next
    /// head, and so on. Connections started while every timeout was off have no timers and
    /// get none.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.idle = ticks(timeouts.idle);
        self.header = ticks(timeouts.header);
        self.body = ticks(timeouts.body);
        self.send = ticks(timeouts.send);
        self.linger = ticks(timeouts.linger);
        if !self.on() && (self.idle | self.header | self.body | self.send | self.linger) != 0 {
            self.heads = vec![NIL; SLOTS as usize];
        }
    }

    fn later(&self, ticks: u32) -> u32 {
        if ticks == 0 {
            NEVER
        } else {
            self.clock.saturating_add(ticks)
        }
    }

    /// Starts `key`'s timers: a new connection (any earlier node of that slot is dropped).
    pub fn start(&mut self, key: u32) {
        if !self.on() {
            return;
        }
        let i = key as usize;
        if i >= self.nodes.len() {
            self.nodes.resize(i + 1, UNLINKED);
        }
        self.unlink(key);
        let idle_due = self.later(self.idle);
        self.nodes[i] = Node {
            idle_due,
            live: true,
            ..UNLINKED
        };
        if idle_due != NEVER {
            self.link(key, idle_due);
        }
    }

    /// Bytes arrived on `key`'s connection: its idle deadline starts again, and its body
    /// deadline if a body is being read.
    pub fn received(&mut self, key: u32) {
        if self.idle | self.body == 0 {
            return;
        }
        let (idle, body) = (self.later(self.idle), self.later(self.body));
        self.update(key, |n| {
            n.idle_due = idle;
            if n.body_due != NEVER {
                n.body_due = body;
            }
        });
    }

    /// The peer took bytes of `key`'s output: its idle deadline starts again, and its send
    /// deadline if more is owed.
    pub fn sent(&mut self, key: u32) {
        if self.idle | self.send == 0 {
            return;
        }
        let (idle, send) = (self.later(self.idle), self.later(self.send));
        self.update(key, |n| {
            n.idle_due = idle;
            if n.send_due != NEVER {
                n.send_due = send;
            }
        });
    }

    /// Which part of an HTTP request `key`'s connection is reading: the header deadline is
    /// set when a head begins and cleared when it ends; the body deadline likewise for a body.
    pub fn reading(&mut self, key: u32, part: Reading) {
        if self.header | self.body == 0 {
            return;
        }
        let (head, body) = (self.later(self.header), self.later(self.body));
        self.update(key, |n| {
            let (keep_head, keep_body) = (n.head_due, n.body_due);
            (n.head_due, n.body_due) = match part {
                Reading::Between => (NEVER, NEVER),
                Reading::Head if keep_head == NEVER => (head, NEVER),
                Reading::Head => (keep_head, NEVER),
                Reading::Body if keep_body == NEVER => (NEVER, body),
                Reading::Body => (NEVER, keep_body),
            };
        });
    }

    /// Whether `key`'s connection owes output not yet taken: the send deadline is set when
    /// it begins to and cleared when it no longer does.
    pub fn owed(&mut self, key: u32, owed: bool) {
        if self.send == 0 {
            return;
        }
        let due = self.later(self.send);
        self.update(key, |n| match (owed, n.send_due == NEVER) {
            (true, true) => n.send_due = due,
            (false, false) => n.send_due = NEVER,
            _ => {}
        });
    }

    /// Changes `key`'s deadlines with `f` (a live node not lingering: a linger is cut on
    /// time whatever moves), relinking the node at once only if it is now due before the
    /// bucket it sits in (or sits in none).
    fn update(&mut self, key: u32, f: impl FnOnce(&mut Node)) {
        let Some(n) = self
            .nodes
            .get_mut(key as usize)
            .filter(|n| n.live && !n.lingering)
        else {
            return;
        };
        f(n);
        let due = n.due();
        if due < n.at {
            self.unlink(key);
            self.link(key, due);
        }
    }

    /// `key`'s connection closes after a final answer (a lingering close, or a 408 waiting
    /// to be taken): it is cut after the linger time (without one, the idle timeout), however
    /// many bytes still move. Only the first call counts.
    pub fn linger(&mut self, key: u32) {
        let ticks = [self.linger, self.idle, self.header]
            .into_iter()
            .find(|t| *t > 0)
            .unwrap_or(0);
        let Some(n) = self.nodes.get(key as usize) else {
            return;
        };
        if ticks == 0 || n.lingering {
            return;
        }
        self.unlink(key);
        let due = self.later(ticks);
        self.nodes[key as usize] = Node {
            idle_due: due,
            live: true,
            lingering: true,
            ..UNLINKED
        };
        self.link(key, due);
    }

    /// `key`'s connection is gone.
    pub fn stop(&mut self, key: u32) {
        if (key as usize) < self.nodes.len() {
            self.unlink(key);
            self.nodes[key as usize] = UNLINKED;
        }
    }

    /// Connections with a deadline set.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.linked
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.linked == 0
    }

    /// How long the shard may sleep before the next tick is due; None with nothing linked.
    pub fn next_wake(&self, now: Instant) -> Option<Duration> {
        if self.linked == 0 {
            return None;
        }
        let next = self.epoch + TICK * self.clock.saturating_add(1);
        Some(
            next.saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        )
    }

    /// Sets the clock to `now` (once per loop turn, before the turn's events): deadlines set
    /// from here on count from it.
    pub fn set_clock(&mut self, now: Instant) {
        let t = now.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos();
        self.clock = self.clock.max(u32::try_from(t).unwrap_or(u32::MAX / 2));
    }

    /// Appends to `out` each connection whose deadline the clock has passed (its node is
    /// unlinked: `start` or `linger` links it again).
    pub fn expire(&mut self, out: &mut Vec<(u32, Expired)>) {
        let target = self.clock;
        if !self.on() || target <= self.now {
            return;
        }
        // Every linked node sits in one of the SLOTS buckets after `self.now`: visiting at
        // most that many covers them all, however long the shard slept.
        let last = target.min(self.now.saturating_add(SLOTS));
        let first = self.now + 1;
        self.now = target;
        for t in first..=last {
            if self.linked == 0 {
                break;
            }
            let b = (t & (SLOTS - 1)) as usize;
            let mut cur = std::mem::replace(&mut self.heads[b], NIL);
            while cur != NIL {
                let n = self.nodes[cur as usize];
                let key = cur;
                cur = n.next;
                self.nodes[key as usize].at = NEVER;
                self.linked -= 1;
                let expired = if n.head_due <= target {
                    Expired::Header
                } else if n.body_due <= target {
                    Expired::Body
                } else if n.send_due <= target {
                    Expired::Send
                } else if n.idle_due <= target && n.lingering {
                    Expired::Linger
                } else if n.idle_due <= target {
                    Expired::Idle
                } else {
                    // Not due yet (or nothing set any more: it stays unlinked until a
                    // deadline is set again).
                    if n.due() != NEVER {
                        self.link(key, n.due());
                    }
                    continue;
                };
                self.nodes[key as usize].live = false;
                out.push((key, expired));
            }
        }
    }

    /// Links `key` into the bucket for `due`, clamped to the wheel's span ahead of `now`.
    fn link(&mut self, key: u32, due: u32) {
        let at = due.clamp(self.now + 1, self.now + SLOTS - 1);
        let b = (at & (SLOTS - 1)) as usize;
        let head = self.heads[b];
        if head != NIL {
            self.nodes[head as usize].prev = key;
        }
        let n = &mut self.nodes[key as usize];
        n.prev = NIL;
        n.next = head;
        n.at = at;
        self.heads[b] = key;
        self.linked += 1;
    }

    fn unlink(&mut self, key: u32) {
        let n = self.nodes[key as usize];
        if n.at == NEVER {
            return;
        }
        if n.prev == NIL {
            self.heads[(n.at & (SLOTS - 1)) as usize] = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next != NIL {
            self.nodes[n.next as usize].prev = n.prev;
        }
        let n = &mut self.nodes[key as usize];
        n.at = NEVER;
        n.prev = NIL;
        n.next = NIL;
        self.linked -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(s))
    }

    fn at(w: &Wheel, s: f64) -> Instant {
        w.epoch + Duration::from_secs_f64(s)
    }

    fn expire(w: &mut Wheel, s: f64) -> Vec<(u32, Expired)> {
        let mut out = Vec::new();
        w.set_clock(at(w, s));
        w.expire(&mut out);
        out.sort_unstable_by_key(|e| e.0);
        out
    }

    #[test]
    fn new_timeouts_apply_to_new_deadlines_and_fire_no_earlier_than_the_old() {
        let idle = |s| Timeouts {
            idle: secs(s),
            header: None,
            body: None,
            send: None,
            linger: None,
        };
        let mut w = Wheel::new(idle(10.0), Instant::now());
        w.start(1);
        w.set_timeouts(idle(1.0));
        w.start(2);
        assert_eq!(expire(&mut w, 1.2), vec![(2, Expired::Idle)]);
        // Progress on the old connection gives it the shorter timeout from then on.
        w.received(1);
        assert!(expire(&mut w, 2.25).is_empty());
        assert_eq!(expire(&mut w, 2.35), vec![(1, Expired::Idle)]);
        // A wheel that started with every timeout off starts timing new connections.
        let mut off = Wheel::new(Timeouts::default(), Instant::now());
        off.start(5);
        off.set_timeouts(idle(1.0));
        off.start(6);
        assert_eq!(expire(&mut off, 1.2), vec![(6, Expired::Idle)]);
    }

    #[test]
    fn idle_fires_after_the_timeout_never_before() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(1.0),
                header: None,
                body: None,
                send: None,
                linger: None,
            },
            Instant::now(),
        );
        w.start(3);
        w.start(7);
        assert_eq!(w.len(), 2);
        assert!(expire(&mut w, 0.95).is_empty());
        assert!(
            expire(&mut w, 1.0).is_empty(),
            "a started tick never counts whole"
        );
        assert_eq!(
            expire(&mut w, 1.2),
            vec![(3, Expired::Idle), (7, Expired::Idle)]
        );
        assert!(w.is_empty());
        assert_eq!(w.next_wake(at(&w, 1.2)), None);
    }

    #[test]
    fn progress_pushes_the_idle_deadline_back() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(1.0),
                header: None,
                body: None,
                send: None,
                linger: None,
            },
            Instant::now(),
        );
        w.start(0);
        w.start(1);
        for step in 1..=30 {
            let t = f64::from(step) * 0.1;
            let out = expire(&mut w, t);
            if t < 1.05 {
                assert!(out.is_empty(), "{t}: {out:?}");
            } else if !out.is_empty() {
                assert_eq!(out, vec![(1, Expired::Idle)], "{t}");
            }
            w.received(0);
        }
        assert_eq!(w.len(), 1, "connection 0 kept busy, connection 1 timed out");
        assert_eq!(expire(&mut w, 4.2), vec![(0, Expired::Idle)]);
    }

    #[test]
    fn a_header_deadline_fires_even_while_bytes_trickle_in() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(10.0),
                header: secs(1.0),
                body: None,
                send: None,
                linger: None,
            },
            Instant::now(),
        );
        w.start(2);
        expire(&mut w, 0.5);
        w.reading(2, Reading::Head);
        for step in 6..=14 {
            let out = expire(&mut w, f64::from(step) * 0.1);
            assert!(out.is_empty(), "{step}: {out:?}");
            w.received(2);
            w.reading(2, Reading::Head);
        }
        assert_eq!(expire(&mut w, 1.7), vec![(2, Expired::Header)]);
        // A head that ends in time clears it: only idle remains.
        w.start(2);
        w.reading(2, Reading::Head);
        expire(&mut w, 2.0);
        w.reading(2, Reading::Between);
        assert!(expire(&mut w, 5.0).is_empty());
        assert_eq!(expire(&mut w, 12.0), vec![(2, Expired::Idle)]);
    }

    #[test]
    fn a_body_times_out_between_its_bytes_not_over_its_whole() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(10.0),
                header: secs(2.0),
                body: secs(1.0),
                send: None,
                linger: None,
            },
            Instant::now(),
        );
        w.start(1);
        w.reading(1, Reading::Head);
        expire(&mut w, 0.2);
        w.reading(1, Reading::Body);
        // A byte every half second for 4 s: longer than the body and header timeouts.
        for step in 1..=8 {
            assert!(expire(&mut w, 0.2 + f64::from(step) * 0.5).is_empty());
            w.received(1);
            w.reading(1, Reading::Body);
        }
        // The last byte came at 4.2 s: the body deadline is 1 s (and a tick) later.
        assert!(expire(&mut w, 5.25).is_empty());
        assert_eq!(expire(&mut w, 5.35), vec![(1, Expired::Body)]);
        // A body that ends in time clears it: only idle remains.
        w.start(1);
        w.reading(1, Reading::Body);
        expire(&mut w, 5.8);
        w.reading(1, Reading::Between);
        assert!(expire(&mut w, 14.0).is_empty());
        assert_eq!(expire(&mut w, 15.5), vec![(1, Expired::Idle)]);
    }

    #[test]
    fn a_send_times_out_when_owed_output_is_not_taken() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(10.0),
                header: None,
                body: None,
                send: secs(1.0),
                linger: None,
            },
            Instant::now(),
        );
        // Owed for 3 s while the peer takes some every half second: no timeout.
        w.start(1);
        w.owed(1, true);
        for step in 1..=6 {
            assert!(expire(&mut w, f64::from(step) * 0.5).is_empty());
            w.sent(1);
            w.owed(1, true);
        }
        // Then it takes nothing: cut 1 s (and a tick) after the last bytes it took.
        assert!(expire(&mut w, 4.05).is_empty());
        assert_eq!(expire(&mut w, 4.15), vec![(1, Expired::Send)]);
        // Nothing owed, nothing to take: only idle applies.
        w.start(2);
        w.owed(2, true);
        expire(&mut w, 4.5);
        w.owed(2, false);
        assert!(expire(&mut w, 13.0).is_empty());
        assert_eq!(expire(&mut w, 14.3), vec![(2, Expired::Idle)]);
    }

    #[test]
    fn linger_and_stop() {
        let mut w = Wheel::new(
            Timeouts {
                idle: None,
                header: secs(2.0),
                body: None,
                send: None,
                linger: None,
            },
            Instant::now(),
        );
        w.start(4);
        assert!(
            w.is_empty(),
            "no idle timeout: nothing to wait for until a head begins"
        );
        w.reading(4, Reading::Head);
        assert_eq!(expire(&mut w, 2.3), vec![(4, Expired::Header)]);
        w.linger(4);
        assert_eq!(w.len(), 1);
        assert_eq!(expire(&mut w, 4.5), vec![(4, Expired::Linger)]);
        w.start(5);
        w.reading(5, Reading::Head);
        w.stop(5);
        assert!(w.is_empty());
        assert!(expire(&mut w, 100.0).is_empty());
    }

    #[test]
    fn a_linger_is_cut_on_time_whatever_moves() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(10.0),
                header: secs(5.0),
                body: None,
                send: None,
                linger: secs(1.0),
            },
            Instant::now(),
        );
        w.start(1);
        w.linger(1);
        for step in 1..=10 {
            assert!(expire(&mut w, f64::from(step) * 0.1).is_empty());
            w.received(1);
            w.reading(1, Reading::Head);
            w.linger(1);
        }
        assert_eq!(expire(&mut w, 1.2), vec![(1, Expired::Linger)]);
    }

    #[test]
    fn deadlines_beyond_the_wheel_and_long_sleeps() {
        let mut w = Wheel::new(
            Timeouts {
                idle: secs(300.0),
                header: None,
                body: None,
                send: None,
                linger: None,
            },
            Instant::now(),
        );
        w.start(1);
        assert!(expire(&mut w, 150.0).is_empty());
        assert!(expire(&mut w, 299.0).is_empty());
        assert_eq!(expire(&mut w, 300.3), vec![(1, Expired::Idle)]);
        // A shard that slept through many turns of the wheel still finds everything.
        w.start(2);
        assert_eq!(expire(&mut w, 5000.0), vec![(2, Expired::Idle)]);
    }

    #[test]
    fn off_costs_nothing() {
        let mut w = Wheel::new(Timeouts::default(), Instant::now());
        w.start(1_000_000);
        w.reading(1_000_000, Reading::Head);
        assert!(w.nodes.is_empty() && w.is_empty());
        assert!(expire(&mut w, 1e6).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start(u8),
        Received(u8),
        Sent(u8),
        Reading(u8, Reading),
        Owed(u8, bool),
        Stop(u8),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        let part = prop_oneof![
            Just(Reading::Between),
            Just(Reading::Head),
            Just(Reading::Body)
        ];
        prop_oneof![
            (0u8..32).prop_map(Op::Start),
            (0u8..32).prop_map(Op::Received),
            (0u8..32).prop_map(Op::Sent),
            (0u8..32, part).prop_map(|(k, p)| Op::Reading(k, p)),
            (0u8..32, any::<bool>()).prop_map(|(k, o)| Op::Owed(k, o)),
            (0u8..32).prop_map(Op::Stop),
            (0u16..3000).prop_map(Op::Advance),
        ]
    }

    /// A model with the same tick arithmetic and a scan of every connection.
    #[derive(Default, Clone, Copy)]
    struct Model {
        live: bool,
        idle_due: u32,
        head_due: Option<u32>,
        body_due: Option<u32>,
        send_due: Option<u32>,
    }

    proptest! {
        /// The wheel fires exactly what a scan of every connection would, at the same tick.
        #[test]
        fn the_wheel_agrees_with_a_full_scan(ops in proptest::collection::vec(op(), 1..300)) {
            let timeouts = Timeouts {
                idle: secs(2.0),
                header: secs(0.7),
                body: secs(1.1),
                send: secs(0.4),
                linger: None,
            };
            let mut w = Wheel::new(timeouts, Instant::now());
            let mut m = [Model::default(); 32];
            let mut clock = 0u32; // in ticks
            for op in ops {
                match op {
                    Op::Start(k) => {
                        w.start(k.into());
                        m[k as usize] = Model { live: true, idle_due: clock + w.idle, ..Model::default() };
                    }
                    Op::Received(k) => {
                        w.received(k.into());
                        let s = &mut m[k as usize];
                        if s.live {
                            s.idle_due = clock + w.idle;
                            s.body_due = s.body_due.map(|_| clock + w.body);
                        }
                    }
                    Op::Sent(k) => {
                        w.sent(k.into());
                        let s = &mut m[k as usize];
                        if s.live {
                            s.idle_due = clock + w.idle;
                            s.send_due = s.send_due.map(|_| clock + w.send);
                        }
                    }
                    Op::Reading(k, part) => {
                        w.reading(k.into(), part);
                        let s = &mut m[k as usize];
                        if s.live {
                            let (head, body) = (clock + w.header, clock + w.body);
                            (s.head_due, s.body_due) = match part {
                                Reading::Between => (None, None),
                                Reading::Head => (s.head_due.or(Some(head)), None),
                                Reading::Body => (None, s.body_due.or(Some(body))),
                            };
                        }
                    }
                    Op::Owed(k, owed) => {
                        w.owed(k.into(), owed);
                        let s = &mut m[k as usize];
                        if s.live {
                            s.send_due = if owed { s.send_due.or(Some(clock + w.send)) } else { None };
                        }
                    }
                    Op::Stop(k) => {
                        w.stop(k.into());
                        m[k as usize].live = false;
                    }
                    Op::Advance(ms) => {
                        clock += u32::from(ms) / 100;
                        let mut got = Vec::new();
                        w.set_clock(w.epoch + TICK * clock);
                        w.expire(&mut got);
                        got.sort_unstable_by_key(|e| e.0);
                        let mut want = Vec::new();
                        let passed = |d: Option<u32>| d.is_some_and(|d| d <= clock);
                        for (k, s) in m.iter_mut().enumerate() {
                            if !s.live {
                                continue;
                            }
                            let why = if passed(s.head_due) {
                                Expired::Header
                            } else if passed(s.body_due) {
                                Expired::Body
                            } else if passed(s.send_due) {
                                Expired::Send
                            } else if s.idle_due <= clock {
                                Expired::Idle
                            } else {
                                continue;
                            };
                            want.push((k as u32, why));
                            s.live = false;
                        }
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(w.len(), m.iter().filter(|s| s.live).count());
            }
        }
    }
}
