//! The keyspace owner: where epoll-server serves Redis with worker processes, one more
//! process holds the one keyspace, its append-only file and its access log. Each worker
//! proxies its Redis connections over one link (`link`, an abstract unix socket named
//! after the master's pid) in frames (`frame`); the owner keeps a virtual client per
//! (link, connection id), a `proto::Session` fed through `ProtoEnv::input` as a local
//! connection's is, so every command, SELECT, HELLO, CLIENT, QUIT and protocol error
//! behaves as in one process.
//!
//! One thread, one edge-triggered epoll loop (the drain rule of `shard`'s module doc). A
//! turn reads every ready link until EAGAIN, runs the commands of each data frame and
//! gathers their replies per link (`Link::replies`); then, as the Reactor's shard does
//! (Redis's beforeSleep), the journal goes to the file (`Aof::write_out`, with `always`
//! fdatasynced), and only then are the replies framed and written, one write per link. So
//! with `always` no reply leaves before its write is durable; a failed sync closes the
//! clients whose writes it held, without their replies. A link whose output is above
//! `link::OUT_BOUND` is not read until it is written (the worker then stops reading its
//! clients). A link's EOF (its worker died or stopped) drops its clients.
//!
//! Each data frame run is followed by a `Ran` frame after its replies: the worker forwards
//! a connection's next read only then (and once those replies are written), so a client
//! that does not read holds one read's replies, as in one process. Closes: the owner
//! answers a worker's close frame with its own, after the replies owed; after QUIT or a
//! protocol error it sends the reply, then its close, and forgets the client; frames for a
//! client it no longer holds are dropped.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::frame::{self, Frame, Inbox};
use super::link::{OUT_BOUND, Wire};
use super::log::ShardLog;
use super::shard::{GEN_MASK, Token};
use crate::cli::Fsync;
use crate::plan::EngineKind;
use crate::proto::{Capture, Session};
use crate::server::access::Pending;
use crate::server::aof::Aof;
use crate::server::core::{ProtoEnv, ShardCore};
use crate::server::{Engine, ShardCtx};
use crate::stats::Counters;
use crate::sys;

const EVENTS: usize = 256;
const LINK_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// The owner wakes at least this often, so the keyspace's active expiry runs with no
/// traffic too (`ShardCore::turn`, as Redis's serverCron at hz 10).
const TICK: Duration = Duration::from_millis(100);

/// The owner's engine for `server::serve`: one thread, one `Owner`, its one listener the
/// link socket.
pub struct OwnerEngine;

impl Engine for OwnerEngine {
    const NAME: &'static str = "epoll";
    // The Reactor's: `serve` runs `everysec`'s fdatasync on a thread of its own.
    const KIND: EngineKind = EngineKind::Epoll;

    fn batch_usec(&self) -> u32 {
        0
    }

    fn run_thread(
        &self,
        ctxs: Vec<ShardCtx>,
        ready: &mut dyn FnMut(),
    ) -> io::Result<Vec<Counters>> {
        let [ctx] = <[ShardCtx; 1]>::try_from(ctxs)
            .unwrap_or_else(|c| panic!("the keyspace owner is one loop, not {}", c.len()));
        let owner = Owner::new(ctx)?;
        ready();
        Ok(vec![owner.run()?])
    }
}

/// A worker's connection, as the owner serves it.
struct Client {
    session: Box<Session>,
    /// With `--access-log`: its commands, for the log.
    capture: Option<Box<Capture>>,
    peer: Option<SocketAddr>,
}

/// Replies of one client gathered this turn: up to `end` in `Link::replies`.
struct Piece {
    id: u64,
    end: usize,
    /// A write it answers waits for this turn's fdatasync (`always`).
    journaled: bool,
    /// It answers a data frame: a `Ran` follows its replies.
    ran: bool,
    /// Its close follows (QUIT, a protocol error, or the answer to the worker's close).
    close: bool,
}

struct Link {
    wire: Wire,
    generation: u32,
    clients: HashMap<u64, Client>,
    /// An edge came and the socket was not read to EAGAIN (its output was over the bound).
    unread: bool,
    replies: Vec<u8>,
    pieces: Vec<Piece>,
}

impl Link {
    /// What the link owes its worker, framed or not yet.
    fn owed(&self) -> usize {
        self.wire.out.len() + self.replies.len()
    }
}

pub struct Owner {
    core: ShardCore,
    epoll: OwnedFd,
    /// The link socket, until the stop.
    listener: Option<OwnedFd>,
    _wake: OwnedFd,
    links: Slab<Link>,
    next_gen: u32,
    log: Option<ShardLog>,
    aof: Option<Arc<Aof>>,
}

impl Owner {
    pub fn new(mut ctx: ShardCtx) -> io::Result<Owner> {
        let epoll = sys::epoll_create()?;
        let listener = ctx
            .listeners
            .pop()
            .expect("the owner is given its link socket");
        let ev = (libc::EPOLLIN | libc::EPOLLET) as u32;
        sys::epoll_add(
            epoll.as_raw_fd(),
            listener.as_raw_fd(),
            ev,
            Token::Listener(0).encode(),
        )?;
        sys::epoll_add(
            epoll.as_raw_fd(),
            ctx.wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::Wake.encode(),
        )?;
        let core = ShardCore::new(&ctx);
        Ok(Owner {
            core,
            epoll,
            listener: Some(listener),
            _wake: ctx.wake,
            links: Slab::new(),
            next_gen: 0,
            log: ctx
                .log
                .map(|(file, cap, fsync)| ShardLog::new(Pending::new(file, cap, fsync))),
            aof: ctx.redis.as_ref().and_then(|r| r.aof.clone()),
        })
    }

    pub fn run(mut self) -> io::Result<Counters> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            let now = Instant::now();
            let readable = self
                .links
                .iter()
                .any(|(_, l)| l.unread && l.owed() <= OUT_BOUND);
            let wait = [
                self.core.wait_timeout(now),
                self.log.as_ref().and_then(|l| l.wait(now)),
            ]
            .into_iter()
            .flatten()
            .fold(TICK, Duration::min);
            let timeout = match readable {
                true => 0,
                false => wait.as_micros().div_ceil(1000).max(1) as i32,
            };
            self.core.counters.syscalls += 1;
            let n = sys::epoll_wait(self.epoll.as_raw_fd(), &mut events, timeout)?;
            self.core.turn(Instant::now());
            for ev in &events[..n] {
                match Token::decode(ev.u64) {
                    Some(Token::Wake) => self.begin_stop(),
                    Some(Token::Listener(_)) => self.accept_links()?,
                    Some(Token::Conn { slot, generation }) => {
                        let Some(l) = self
                            .links
                            .get_mut(slot as usize)
                            .filter(|l| l.generation == generation)
                        else {
                            continue;
                        };
                        if ev.events & libc::EPOLLOUT as u32 != 0 {
                            l.wire.writable();
                        }
                        if ev.events & !(libc::EPOLLOUT as u32) != 0 {
                            l.unread = true;
                        }
                    }
                    Some(Token::Link) | None => {}
                }
            }
            let ready: Vec<usize> = self
                .links
                .iter()
                .filter(|(_, l)| l.unread)
                .map(|(k, _)| k)
                .collect();
            for slot in ready {
                self.read_link(slot);
            }
            let durable = self.write_journal();
            let slots: Vec<usize> = self.links.iter().map(|(k, _)| k).collect();
            for slot in slots {
                self.send_replies(slot, durable);
            }
            if self.core.overdue(Instant::now()) {
                self.links.clear();
            }
            let done = self.core.stopping() && self.links.is_empty();
            if let Some(log) = &mut self.log {
                log.maybe_flush(Instant::now(), done, &mut self.core.counters);
            }
            self.core.publish();
            if done {
                return Ok(self.core.counters);
            }
        }
    }

    /// A worker (or its restart) connects.
    fn accept_links(&mut self) -> io::Result<()> {
        let Some(listener) = &self.listener else {
            return Ok(());
        };
        loop {
            self.core.counters.syscalls += 1;
            match sys::accept_nonblocking(listener.as_raw_fd()) {
                Ok(fd) => {
                    // The socket's name is public to the network namespace: a link is taken
                    // only from a process of this server's user, as the workers are.
                    self.core.counters.syscalls += 1;
                    // SAFETY: geteuid(2) takes nothing and cannot fail.
                    let ours = unsafe { libc::geteuid() };
                    match sys::peer_uid(fd.as_raw_fd()) {
                        Ok(uid) if uid == ours => {}
                        other => {
                            self.core.counters.refused += 1;
                            eprintln!(
                                "epoll-server keyspace owner: refused a link from {} (not \
                                 this server's user {ours})",
                                other.map_or_else(|e| e.to_string(), |uid| format!("uid {uid}"))
                            );
                            continue;
                        }
                    }
                    self.next_gen = self.next_gen.wrapping_add(1) & GEN_MASK;
                    let entry = self.links.vacant_entry();
                    let token = Token::Conn {
                        slot: entry.key() as u32,
                        generation: self.next_gen,
                    };
                    self.core.counters.syscalls += 1;
                    sys::epoll_add(
                        self.epoll.as_raw_fd(),
                        fd.as_raw_fd(),
                        LINK_EVENTS,
                        token.encode(),
                    )?;
                    entry.insert(Link {
                        wire: Wire::new(fd),
                        generation: self.next_gen,
                        clients: HashMap::new(),
                        unread: true,
                        replies: Vec::new(),
                        pieces: Vec::new(),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads link `slot` until EAGAIN or its output is over the bound, running the
    /// commands of each frame; its EOF, an error, or bytes that are no frame drop it.
    fn read_link(&mut self, slot: usize) {
        let Owner {
            core, links, log, ..
        } = self;
        let link = &mut links[slot];
        let env = core.proto.as_ref().expect("the owner serves Redis");
        let gone = loop {
            if link.owed() > OUT_BOUND {
                return;
            }
            match link.wire.read_once(&mut core.counters) {
                Ok(None) => {
                    link.unread = false;
                    return;
                }
                Ok(Some(0)) => break None,
                Ok(Some(_)) => {}
                Err(e) => break Some(e.to_string()),
            }
            let mut inbox = std::mem::take(&mut link.wire.inbox);
            let taken = take_frames(&mut inbox, link, env, &mut core.counters, log.as_mut());
            link.wire.inbox = inbox;
            if let Err(e) = taken {
                break Some(e.to_string());
            }
        };
        if let Some(why) = gone {
            crate::server::say(format!(
                "epoll-server keyspace owner: dropping a worker's link: {why}"
            ));
        }
        // Its worker is gone: so are its clients (closing the socket leaves the epoll set).
        self.links.remove(slot);
    }

    /// Redis's beforeSleep: what this turn's commands journaled goes to the file, with
    /// `always` fdatasynced. False if that failed.
    fn write_journal(&mut self) -> bool {
        let Some(aof) = &self.aof else {
            return true;
        };
        let journal = super::shard::journal(&self.core.proto);
        aof.write_out(
            journal,
            aof.policy() == Fsync::Always,
            &mut self.core.counters,
        )
    }

    /// Frames link `slot`'s replies of this turn and writes them (one write, more only if
    /// the first was short); a client whose write `durable` says the file may not hold is
    /// closed without its replies. A write error drops the link.
    fn send_replies(&mut self, slot: usize, durable: bool) {
        let link = &mut self.links[slot];
        frame_replies(link, durable, &mut self.core.counters);
        if let Err(e) = link.wire.flush(&mut self.core.counters) {
            crate::server::say(format!(
                "epoll-server keyspace owner: dropping a worker's link: {e}"
            ));
            self.links.remove(slot);
        }
    }

    /// The stop: no more links are taken; the loop ends once the workers (stopped first by
    /// the master) have closed theirs, or at the shutdown timeout.
    fn begin_stop(&mut self) {
        if self.core.begin_stop(Instant::now()) {
            self.listener = None;
        }
    }
}

/// Frames `link`'s replies of this turn into its output, in order: each piece's replies,
/// its `Ran`, its `Close`. Unless `durable`, a client with a piece whose write waited for the
/// sync is closed there instead, without that reply or any after it.
fn frame_replies(link: &mut Link, durable: bool, counters: &mut Counters) {
    let mut at = 0;
    let mut failed: Vec<u64> = Vec::new();
    for p in link.pieces.drain(..) {
        let bytes = &link.replies[at..p.end];
        at = p.end;
        if p.journaled {
            counters.aof_held += 1;
        }
        if failed.contains(&p.id) {
            continue;
        }
        if p.journaled && !durable {
            // Never acknowledge a write the file may not hold.
            failed.push(p.id);
            link.clients.remove(&p.id);
            frame::close(&mut link.wire.out, p.id);
            continue;
        }
        frame::data(&mut link.wire.out, p.id, bytes);
        if p.ran {
            frame::ran(&mut link.wire.out, p.id);
        }
        if p.close {
            frame::close(&mut link.wire.out, p.id);
        }
    }
    link.replies.clear();
    if link.replies.capacity() > OUT_BOUND {
        link.replies = Vec::new();
    }
}

/// Runs the frames whole in `inbox` for `link`: opens and closes clients, feeds their
/// bytes to their sessions, gathering the replies.
fn take_frames(
    inbox: &mut Inbox,
    link: &mut Link,
    env: &ProtoEnv,
    counters: &mut Counters,
    mut log: Option<&mut ShardLog>,
) -> Result<(), frame::FrameError> {
    while let Some(f) = inbox.next_frame()? {
        match f {
            Frame::Open { id, peer } => {
                let session = Box::new(env.session());
                let capture = log.is_some().then(|| Box::new(Capture::new(&session)));
                link.clients.insert(
                    id,
                    Client {
                        session,
                        capture,
                        peer,
                    },
                );
            }
            Frame::Data { id, bytes } => {
                let Some(c) = link.clients.get_mut(&id) else {
                    // Closed here (QUIT, a protocol error): the rest is discarded.
                    continue;
                };
                let o = env.input(
                    &mut c.session,
                    bytes,
                    &mut link.replies,
                    c.capture.as_deref_mut(),
                );
                counters.requests += u64::from(o.answers);
                if let (Some(sl), Some(capture)) = (log.as_deref_mut(), c.capture.as_deref_mut()) {
                    sl.pending.answered(c.peer, capture.done(), counters);
                    sl.added(counters);
                }
                link.pieces.push(Piece {
                    id,
                    end: link.replies.len(),
                    journaled: o.lsn.is_some(),
                    ran: true,
                    close: o.close,
                });
                if o.close {
                    link.clients.remove(&id);
                }
            }
            // Only the owner sends it.
            Frame::Ran { .. } => {}
            Frame::Close { id } => {
                if link.clients.remove(&id).is_some() {
                    link.pieces.push(Piece {
                        id,
                        end: link.replies.len(),
                        journaled: false,
                        ran: false,
                        close: true,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::redis::{Config, Keyspace, Limits};
    use crate::server::core::RedisEnv;

    /// An environment serving a journaled keyspace; `hold`: `--appendfsync always`.
    fn env(hold: bool) -> ProtoEnv {
        let keyspace = Keyspace::new(Config {
            maxmemory: None,
            journal: true,
        });
        ProtoEnv {
            limits: crate::proto::http::Limits::default(),
            date: crate::proto::http::Date::at(0),
            now: Instant::now(),
            redis: Some(RedisEnv::new(Arc::new(keyspace), Limits::default(), hold)),
        }
    }

    fn link() -> Link {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Link {
            wire: Wire::new(a.into()),
            generation: 0,
            clients: HashMap::new(),
            unread: false,
            replies: Vec::new(),
            pieces: Vec::new(),
        }
    }

    /// Feeds `frames` (built by `build`) to `link`, then frames its replies.
    fn turn(link: &mut Link, env: &ProtoEnv, durable: bool, build: impl Fn(&mut Vec<u8>)) {
        let mut inbox = Inbox::default();
        let mut bytes = Vec::new();
        build(&mut bytes);
        inbox.extend(&bytes);
        let mut counters = Counters::default();
        take_frames(&mut inbox, link, env, &mut counters, None).unwrap();
        frame_replies(link, durable, &mut counters);
    }

    /// What the link's output holds, frame by frame.
    fn sent(link: &mut Link) -> Vec<String> {
        let out = std::mem::take(&mut link.wire.out);
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some((f, used)) = frame::decode(&out[at..]).unwrap() {
            frames.push(match f {
                Frame::Data { id, bytes } => format!("{id} {}", String::from_utf8_lossy(bytes)),
                Frame::Ran { id } => format!("{id} ran"),
                Frame::Close { id } => format!("{id} close"),
                Frame::Open { id, .. } => format!("{id} open"),
            });
            at += used;
        }
        frames
    }

    #[test]
    fn each_data_frame_s_replies_are_followed_by_its_ran() {
        let (env, mut l) = (env(false), link());
        turn(&mut l, &env, true, |b| {
            frame::open(b, 1, None);
            frame::open(b, 2, None);
            frame::data(b, 1, b"SET k v\r\nGET ");
            frame::data(b, 2, b"GET k\r\n");
            frame::data(b, 1, b"k\r\n");
        });
        assert_eq!(
            sent(&mut l),
            [
                "1 +OK\r\n",
                "1 ran",
                "2 $1\r\nv\r\n",
                "2 ran",
                "1 $1\r\nv\r\n",
                "1 ran"
            ]
        );
    }

    #[test]
    fn a_failed_sync_closes_the_clients_whose_writes_it_held_without_their_replies() {
        let (env, mut l) = (env(true), link());
        turn(&mut l, &env, false, |b| {
            frame::open(b, 1, None);
            frame::open(b, 2, None);
            frame::data(b, 1, b"PING\r\n");
            frame::data(b, 1, b"SET k v\r\n");
            frame::data(b, 2, b"PING\r\n");
            frame::data(b, 1, b"PING\r\n");
        });
        assert_eq!(
            sent(&mut l),
            ["1 +PONG\r\n", "1 ran", "1 close", "2 +PONG\r\n", "2 ran"]
        );
        assert!(!l.clients.contains_key(&1) && l.clients.contains_key(&2));
    }

    #[test]
    fn quit_replies_then_closes_and_what_follows_is_dropped() {
        let (env, mut l) = (env(false), link());
        turn(&mut l, &env, true, |b| {
            frame::open(b, 1, None);
            frame::data(b, 1, b"QUIT\r\nPING\r\n");
            frame::data(b, 1, b"PING\r\n");
            // The worker's close crossed the owner's: nothing answers it.
            frame::close(b, 1);
        });
        assert_eq!(sent(&mut l), ["1 +OK\r\n", "1 ran", "1 close"]);
        assert!(l.clients.is_empty());
    }

    #[test]
    fn a_worker_s_close_is_answered_after_the_replies_owed() {
        let (env, mut l) = (env(false), link());
        turn(&mut l, &env, true, |b| {
            frame::open(b, 1, None);
            frame::data(b, 1, b"PING\r\n");
            frame::close(b, 1);
            frame::data(b, 7, b"PING\r\n");
        });
        assert_eq!(sent(&mut l), ["1 +PONG\r\n", "1 ran", "1 close"]);
        assert!(l.clients.is_empty());
    }
}
