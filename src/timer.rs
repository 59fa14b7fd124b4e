//! Per-shard connection deadlines: a hashed timing wheel keyed by connection slot.
//!
//! Each connection has at most one node in the wheel, linked into the bucket of the tick at
//! which it must next be looked at, and two deadlines: idle (pushed back by every byte of
//! progress) and header (set when an HTTP request head begins, cleared when it ends). Progress
//! only writes the new idle deadline into the node (no relinking); when the bucket comes
//! round, a node whose deadline has moved on is relinked for it, so a busy connection costs
//! one relink per timeout period, not one per request. A deadline set earlier than the
//! node's bucket (a header deadline) relinks at once. Every operation is O(1); a clock tick
//! visits one bucket; nothing ever scans all connections.
//!
//! Deadlines are rounded up to whole ticks and never fire early: a timeout of T fires
//! between T and T + `TICK` after the event that set it (plus however late the shard wakes).

use std::time::{Duration, Instant};

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
    /// A lingering close (or the wait for a 408 to be taken) ran out.
    Linger,
}

/// The timeouts a shard enforces; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Option<Duration>,
    pub header: Option<Duration>,
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
    live: false,
    lingering: false,
};

impl Node {
    fn due(&self) -> u32 {
        self.idle_due.min(self.head_due)
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
        let on = timeouts.idle.is_some() || timeouts.header.is_some() || timeouts.linger.is_some();
        Wheel {
            epoch: now,
            clock: 0,
            now: 0,
            idle: ticks(timeouts.idle),
            header: ticks(timeouts.header),
            linger: ticks(timeouts.linger),
            heads: if on {
                vec![NIL; SLOTS as usize]
            } else {
                Vec::new()
            },
            nodes: Vec::new(),
            linked: 0,
        }
    }

    fn on(&self) -> bool {
        !self.heads.is_empty()
    }

    /// New timeouts (SIGHUP), for the deadlines set from now on: a connection's idle
    /// deadline takes the new length at its next progress (a shorter one fires no earlier
    /// than the old one was due), a header deadline at its next head. Connections started
    /// while every timeout was off have no timers and get none.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.idle = ticks(timeouts.idle);
        self.header = ticks(timeouts.header);
        self.linger = ticks(timeouts.linger);
        if !self.on() && (self.idle | self.header | self.linger) != 0 {
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

    /// Bytes moved on `key`'s connection: its idle deadline starts again.
    pub fn progress(&mut self, key: u32) {
        if self.idle == 0 {
            return;
        }
        let due = self.later(self.idle);
        if let Some(n) = self.nodes.get_mut(key as usize)
            && n.live
            && !n.lingering
        {
            // Only ever later than before: the node's bucket comes first and relinks it.
            n.idle_due = due;
        }
    }

    /// Whether `key`'s connection is inside a request head: the header deadline is set when
    /// one begins and cleared when it ends.
    pub fn head(&mut self, key: u32, open: bool) {
        if self.header == 0 {
            return;
        }
        let due = self.later(self.header);
        let Some(n) = self.nodes.get_mut(key as usize).filter(|n| n.live) else {
            return;
        };
        match (open, n.head_due == NEVER) {
            (true, true) => {
                n.head_due = due;
                if n.at == NEVER || due < n.at {
                    self.unlink(key);
                    self.link(key, due);
                }
            }
            (false, false) => n.head_due = NEVER,
            _ => {}
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
                } else if n.idle_due <= target && n.lingering {
                    Expired::Linger
                } else if n.idle_due <= target {
                    Expired::Idle
                } else {
                    // Not due yet (or nothing set any more: it stays unlinked until a head).
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
            linger: None,
        };
        let mut w = Wheel::new(idle(10.0), Instant::now());
        w.start(1);
        w.set_timeouts(idle(1.0));
        w.start(2);
        assert_eq!(expire(&mut w, 1.2), vec![(2, Expired::Idle)]);
        // Progress on the old connection takes the shorter timeout, but not before its
        // old deadline's bucket comes round.
        w.progress(1);
        assert!(expire(&mut w, 2.5).is_empty());
        assert_eq!(expire(&mut w, 10.2), vec![(1, Expired::Idle)]);
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
            w.progress(0);
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
                linger: None,
            },
            Instant::now(),
        );
        w.start(2);
        expire(&mut w, 0.5);
        w.head(2, true);
        for step in 6..=14 {
            let out = expire(&mut w, f64::from(step) * 0.1);
            assert!(out.is_empty(), "{step}: {out:?}");
            w.progress(2);
            w.head(2, true);
        }
        assert_eq!(expire(&mut w, 1.7), vec![(2, Expired::Header)]);
        // A head that ends in time clears it: only idle remains.
        w.start(2);
        w.head(2, true);
        expire(&mut w, 2.0);
        w.head(2, false);
        assert!(expire(&mut w, 5.0).is_empty());
        assert_eq!(expire(&mut w, 12.0), vec![(2, Expired::Idle)]);
    }

    #[test]
    fn linger_and_stop() {
        let mut w = Wheel::new(
            Timeouts {
                idle: None,
                header: secs(2.0),
                linger: None,
            },
            Instant::now(),
        );
        w.start(4);
        assert!(
            w.is_empty(),
            "no idle timeout: nothing to wait for until a head begins"
        );
        w.head(4, true);
        assert_eq!(expire(&mut w, 2.3), vec![(4, Expired::Header)]);
        w.linger(4);
        assert_eq!(w.len(), 1);
        assert_eq!(expire(&mut w, 4.5), vec![(4, Expired::Linger)]);
        w.start(5);
        w.head(5, true);
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
                linger: secs(1.0),
            },
            Instant::now(),
        );
        w.start(1);
        w.linger(1);
        for step in 1..=10 {
            assert!(expire(&mut w, f64::from(step) * 0.1).is_empty());
            w.progress(1);
            w.head(1, true);
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
        w.head(1_000_000, true);
        assert!(w.nodes.is_empty() && w.is_empty());
        assert!(expire(&mut w, 1e6).is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Start(u8),
        Progress(u8),
        Head(u8, bool),
        Stop(u8),
        Advance(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..32).prop_map(Op::Start),
            (0u8..32).prop_map(Op::Progress),
            (0u8..32, any::<bool>()).prop_map(|(k, o)| Op::Head(k, o)),
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
    }

    proptest! {
        /// The wheel fires exactly what a scan of every connection would, at the same tick.
        #[test]
        fn the_wheel_agrees_with_a_full_scan(ops in proptest::collection::vec(op(), 1..300)) {
            let (idle, header) = (2.0, 0.7);
            let mut w = Wheel::new(Timeouts { idle: secs(idle), header: secs(header), linger: None }, Instant::now());
            let mut m = [Model::default(); 32];
            let mut clock = 0u32; // in ticks
            for op in ops {
                match op {
                    Op::Start(k) => {
                        w.start(k.into());
                        m[k as usize] = Model { live: true, idle_due: clock + w.idle, head_due: None };
                    }
                    Op::Progress(k) => {
                        w.progress(k.into());
                        if m[k as usize].live {
                            m[k as usize].idle_due = clock + w.idle;
                        }
                    }
                    Op::Head(k, open) => {
                        w.head(k.into(), open);
                        let s = &mut m[k as usize];
                        if s.live {
                            match (open, s.head_due) {
                                (true, None) => s.head_due = Some(clock + w.header),
                                (false, Some(_)) => s.head_due = None,
                                _ => {}
                            }
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
                        for (k, s) in m.iter_mut().enumerate() {
                            if !s.live {
                                continue;
                            }
                            if s.head_due.is_some_and(|d| d <= clock) {
                                want.push((k as u32, Expired::Header));
                                s.live = false;
                            } else if s.idle_due <= clock {
                                want.push((k as u32, Expired::Idle));
                                s.live = false;
                            }
                        }
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(w.len(), m.iter().filter(|s| s.live).count());
            }
        }
    }
}
