//! `epoll-lt`: the notes' reactor (reactor.c; libevent works the same way). A small
//! reactor registers a handler for each fd with level-triggered epoll: the stop eventfd's,
//! each listener's, each connection's. Its loop waits in epoll_wait and dispatches every
//! event to the handler of the fd it names. The listener's handler accepts (up to a
//! batch) and registers a connection handler for each new socket; a connection's handler
//! reads once or writes once and, when what it waits for changes, switches its interest
//! between EPOLLIN and EPOLLOUT with epoll_ctl; the stop's handler unregisters the stop
//! and the listeners. Level-triggered, one step per ready fd per wait (the rule and the
//! stop are in `table`).
//!
//! Its costs: epoll_wait returns only the ready fds, so a round is O(ready), not O(n) as
//! in poll; the price is an epoll_ctl each time a connection changes between reading and
//! writing, and the kernel's interest list (a red-black tree) and ready list to keep.
//!
//! A handler is an entry in a slab; its token is its slot and a generation. A connection
//! closed by one event leaves no trace for a later event of the same wait: close(2)
//! removes it from the interest list (nothing else refers to its file), its slot is
//! emptied, and should the slot serve a new connection in the same batch, the generation
//! in the late event no longer matches. Unknown tokens are ignored.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use slab::Slab;

use super::Ctx;
use super::echo::Step;
use super::table::{self, Conn};
use crate::plan::MODEL_BUF_BYTES;
use crate::sys;

/// Events per epoll_wait; a connection not reported this round still is next round.
const EVENTS: usize = 1024;

/// What an fd's events go to.
enum Handler {
    Stop,
    /// The listener with this fd (owned by `Ctx`).
    Listener(RawFd),
    Conn(Conn),
}

struct Entry {
    generation: u32,
    handler: Handler,
}

struct Reactor<'a> {
    ctx: &'a Ctx,
    epoll: OwnedFd,
    handlers: Slab<Entry>,
    /// The generation of the next registration.
    generation: u32,
    stopping: bool,
    scratch: Vec<u8>,
}

pub fn run(ctx: Ctx) -> io::Result<()> {
    ctx.stats.call();
    let mut reactor = Reactor {
        ctx: &ctx,
        epoll: sys::epoll_create()?,
        handlers: Slab::new(),
        generation: 0,
        stopping: false,
        scratch: vec![0; MODEL_BUF_BYTES],
    };
    reactor.register(ctx.stop.fd(), libc::EPOLLIN, Handler::Stop)?;
    for l in &ctx.listeners {
        reactor.register(
            l.as_raw_fd(),
            libc::EPOLLIN,
            Handler::Listener(l.as_raw_fd()),
        )?;
    }
    let ended = reactor.run();
    // close(2) of the epoll instance.
    ctx.stats.call();
    drop(reactor);
    ended
}

impl Reactor<'_> {
    /// The loop: wait, dispatch each event; until the stop has closed every connection.
    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        while !(self.stopping && self.handlers.is_empty()) {
            self.ctx.stats.call();
            let n = sys::epoll_wait(self.epoll.as_raw_fd(), &mut events, -1)?;
            for ev in &events[..n] {
                self.dispatch(ev.u64)?;
            }
        }
        Ok(())
    }

    /// Hands an event to its fd's handler; a token of a handler gone is ignored.
    fn dispatch(&mut self, token: u64) -> io::Result<()> {
        let (slot, generation) = ((token as u32) as usize, (token >> 32) as u32);
        let Some(entry) = self.handlers.get(slot) else {
            return Ok(());
        };
        if entry.generation != generation {
            return Ok(());
        }
        match entry.handler {
            Handler::Stop => self.on_stop(),
            Handler::Listener(fd) => self.on_acceptable(fd),
            Handler::Conn(_) => self.on_conn(slot, token),
        }
    }

    /// Registers `handler` for `fd`'s `events`.
    fn register(&mut self, fd: RawFd, events: i32, handler: Handler) -> io::Result<()> {
        let slot = self.handlers.vacant_entry();
        let generation = self.generation;
        self.generation = self.generation.wrapping_add(1);
        let token = (u64::from(generation) << 32) | slot.key() as u64;
        self.ctx.stats.call();
        sys::epoll_add(self.epoll.as_raw_fd(), fd, events as u32, token)?;
        slot.insert(Entry {
            generation,
            handler,
        });
        Ok(())
    }

    /// The listener's handler: accepts, and registers each connection admitted.
    fn on_acceptable(&mut self, listener: RawFd) -> io::Result<()> {
        let ctx = self.ctx;
        for fd in table::accepts(ctx, listener) {
            if let Some(conn) = table::admit(ctx, fd?) {
                let fd = conn.fd();
                self.register(fd, libc::EPOLLIN, Handler::Conn(conn))?;
            }
        }
        Ok(())
    }

    /// A connection's handler: one step; then EPOLLOUT while it owes output, EPOLLIN once
    /// it does not.
    fn on_conn(&mut self, slot: usize, token: u64) -> io::Result<()> {
        let Handler::Conn(conn) = &mut self.handlers[slot].handler else {
            unreachable!("dispatched as a connection");
        };
        let owed = conn.owes();
        match conn.on_ready(&mut self.scratch, &self.ctx.stats, self.stopping) {
            Step::Close(err) => self.close(slot, err),
            _ if conn.owes() != owed => {
                let events = if conn.owes() {
                    libc::EPOLLOUT
                } else {
                    libc::EPOLLIN
                };
                self.ctx.stats.call();
                sys::epoll_modify(self.epoll.as_raw_fd(), conn.fd(), events as u32, token)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The stop's handler: unregisters the stop and the listeners (the stop eventfd stays
    /// readable, and level-triggered epoll would report it at every wait), and closes
    /// every connection that owes nothing.
    fn on_stop(&mut self) -> io::Result<()> {
        self.stopping = true;
        let slots: Vec<usize> = self.handlers.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            let fd = match &self.handlers[slot].handler {
                Handler::Stop => self.ctx.stop.fd(),
                Handler::Listener(fd) => *fd,
                Handler::Conn(conn) => {
                    if !conn.owes() {
                        self.close(slot, None);
                    }
                    continue;
                }
            };
            self.handlers.remove(slot);
            self.ctx.stats.call();
            sys::epoll_delete(self.epoll.as_raw_fd(), fd)?;
        }
        Ok(())
    }

    /// Closes the connection in `slot`, which leaves the interest list with it.
    fn close(&mut self, slot: usize, err: Option<io::Error>) {
        let Handler::Conn(conn) = self.handlers.remove(slot).handler else {
            unreachable!("closing a connection");
        };
        table::close(self.ctx, conn, err);
    }
}
