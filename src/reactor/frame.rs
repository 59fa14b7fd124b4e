//! The frames a Redis worker and the keyspace owner exchange on their unix socket (one link
//! per worker, `owner`): the worker's TCP connections multiplexed by id. Pure: encode into a
//! buffer, decode from one; no I/O.
//!
//! A frame is a 13-byte header, kind (1 byte), connection id (u64, little-endian), payload
//! length (u32, little-endian), then the payload. Worker to owner: `Open` (payload: the
//! peer's address as text, or empty), `Data` (the client's bytes), `Close` (no payload).
//! Owner to worker: `Data` (replies), `Ran` (no payload: one data frame's bytes have been
//! run, their replies sent before it) and `Close` (no payload). A payload is at most
//! `MAX_PAYLOAD` bytes; longer data goes as several frames. Anything else is a broken link.

use std::fmt;
use std::net::SocketAddr;

/// The header: kind, id, payload length.
pub const HEADER: usize = 1 + 8 + 4;
/// The largest payload a frame carries: a bound on what the decoder waits to gather (a
/// 64 KiB read fits whole, a long reply is cut in pieces of this).
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// The longest peer address text (an IPv6 address with scope and port is about 60).
const MAX_PEER: usize = 128;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const CLOSE: u8 = 3;
const RAN: u8 = 4;

/// One frame, borrowing its payload from the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A connection was accepted, from `peer` (None when its address was not known).
    Open { id: u64, peer: Option<SocketAddr> },
    /// Bytes of connection `id`: the client's (to the owner) or its replies (to the worker).
    Data { id: u64, bytes: &'a [u8] },
    /// Connection `id` ends (see `owner` for who sends it when).
    Close { id: u64 },
    /// The owner has run one data frame of connection `id` (its replies came first): the
    /// worker forwards a connection's next read only then, as one process answers a read
    /// before it reads the next.
    Ran { id: u64 },
}

/// Bytes that are not a frame: the link is broken and is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    Kind(u8),
    TooLong { kind: u8, len: u32 },
    Peer,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Kind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::TooLong { kind, len } => {
                write!(f, "frame of kind {kind} with a {len}-byte payload")
            }
            FrameError::Peer => f.write_str("an open frame's peer address does not parse"),
        }
    }
}

fn header(out: &mut Vec<u8>, kind: u8, id: u64, len: usize) {
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Appends an `Open` frame.
pub fn open(out: &mut Vec<u8>, id: u64, peer: Option<SocketAddr>) {
    let text = peer.map(|p| p.to_string()).unwrap_or_default();
    header(out, OPEN, id, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends `bytes` as `Data` frames (none for no bytes).
pub fn data(out: &mut Vec<u8>, id: u64, bytes: &[u8]) {
    for chunk in bytes.chunks(MAX_PAYLOAD) {
        header(out, DATA, id, chunk.len());
        out.extend_from_slice(chunk);
    }
}

/// Appends a `Close` frame.
pub fn close(out: &mut Vec<u8>, id: u64) {
    header(out, CLOSE, id, 0);
}

/// Appends a `Ran` frame.
pub fn ran(out: &mut Vec<u8>, id: u64) {
    header(out, RAN, id, 0);
}

/// The first frame of `buf` and the bytes it took; None while it is not all there.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let kind = head[0];
    let id = u64::from_le_bytes(head[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(head[9..13].try_into().expect("4 bytes"));
    let max = match kind {
        OPEN => MAX_PEER,
        DATA => MAX_PAYLOAD,
        CLOSE | RAN => 0,
        k => return Err(FrameError::Kind(k)),
    };
    if len as usize > max {
        return Err(FrameError::TooLong { kind, len });
    }
    let end = HEADER + len as usize;
    let Some(payload) = buf.get(HEADER..end) else {
        return Ok(None);
    };
    let frame = match kind {
        OPEN if payload.is_empty() => Frame::Open { id, peer: None },
        OPEN => {
            let peer = std::str::from_utf8(payload)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or(FrameError::Peer)?;
            Frame::Open {
                id,
                peer: Some(peer),
            }
        }
        DATA => Frame::Data { id, bytes: payload },
        CLOSE => Frame::Close { id },
        _ => Frame::Ran { id },
    };
    Ok(Some((frame, end)))
}

/// The bytes read from a link and not yet decoded.
#[derive(Debug, Default)]
pub struct Inbox {
    buf: Vec<u8>,
    /// Where the next frame starts.
    at: usize,
}

impl Inbox {
    /// Bytes just read.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        // Decoded twice (the header only, again) so the borrow ends before the drain below.
        match decode(&self.buf[self.at..])?.map(|(_, used)| used) {
            Some(used) => {
                let start = self.at;
                self.at += used;
                Ok(decode(&self.buf[start..self.at])?.map(|(frame, _)| frame))
            }
            None => {
                // Keep only the start of the next frame, so the buffer holds at most one
                // frame's worth between reads.
                self.buf.drain(..self.at);
                self.at = 0;
                Ok(None)
            }
        }
    }

    /// Bytes held of frames not yet whole (or not yet taken).
    pub fn held(&self) -> usize {
        self.buf.len() - self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some((f, used)) = decode(&buf[at..])? {
            frames.push(f);
            at += used;
        }
        assert_eq!(at, buf.len(), "bytes left over");
        Ok(frames)
    }

    #[test]
    fn frames_round_trip() {
        let peer: SocketAddr = "[::1]:6001".parse().unwrap();
        let mut out = Vec::new();
        open(&mut out, 7, Some(peer));
        open(&mut out, 8, None);
        data(&mut out, 7, b"PING\r\n");
        data(&mut out, 7, b"");
        ran(&mut out, 7);
        close(&mut out, u64::MAX);
        assert_eq!(
            all(&out).unwrap(),
            vec![
                Frame::Open {
                    id: 7,
                    peer: Some(peer)
                },
                Frame::Open { id: 8, peer: None },
                Frame::Data {
                    id: 7,
                    bytes: b"PING\r\n"
                },
                Frame::Ran { id: 7 },
                Frame::Close { id: u64::MAX },
            ]
        );
    }

    #[test]
    fn long_data_goes_in_pieces_of_the_largest_payload() {
        let bytes: Vec<u8> = (0..MAX_PAYLOAD * 2 + 5).map(|i| i as u8).collect();
        let mut out = Vec::new();
        data(&mut out, 1, &bytes);
        let frames = all(&out).unwrap();
        assert_eq!(frames.len(), 3);
        let joined: Vec<u8> = frames
            .iter()
            .flat_map(|f| match f {
                Frame::Data { id: 1, bytes } => bytes.to_vec(),
                f => panic!("{f:?}"),
            })
            .collect();
        assert_eq!(joined, bytes);
    }

    #[test]
    fn a_frame_cut_anywhere_waits_for_the_rest() {
        let mut out = Vec::new();
        open(&mut out, 3, Some("127.0.0.1:9".parse().unwrap()));
        data(&mut out, 3, b"GET k\r\n");
        close(&mut out, 3);
        let whole = all(&out).unwrap();
        for cut in 0..=out.len() {
            let mut inbox = Inbox::default();
            let mut got = Vec::new();
            for part in [&out[..cut], &out[cut..]] {
                inbox.extend(part);
                while let Some(f) = inbox.next_frame().unwrap() {
                    got.push(format!("{f:?}"));
                }
            }
            let want: Vec<String> = whole.iter().map(|f| format!("{f:?}")).collect();
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(inbox.held(), 0);
        }
    }

    #[test]
    fn bad_frames_are_errors_not_waits() {
        assert_eq!(decode(&[9; HEADER]), Err(FrameError::Kind(9)));
        let mut out = Vec::new();
        header(&mut out, DATA, 1, MAX_PAYLOAD + 1);
        assert!(matches!(decode(&out), Err(FrameError::TooLong { .. })));
        out.clear();
        header(&mut out, CLOSE, 1, 1);
        assert!(matches!(decode(&out), Err(FrameError::TooLong { .. })));
        out.clear();
        header(&mut out, RAN, 1, 1);
        assert!(matches!(decode(&out), Err(FrameError::TooLong { .. })));
        out.clear();
        header(&mut out, OPEN, 1, 3);
        out.extend_from_slice(b"abc");
        assert_eq!(decode(&out), Err(FrameError::Peer));
        assert_eq!(decode(&out[..HEADER - 1]), Ok(None));
    }
}
