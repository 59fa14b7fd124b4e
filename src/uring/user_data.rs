//! `user_data` encoding: kind (8 bits) | generation (24 bits) | slot (32 bits). Each user of
//! the ring (the server's shard, the load generator's shard) has its own operation-kind enum
//! and implements [`Op`] for it; the ring never interprets kinds.

use std::fmt::Debug;

/// An operation-kind enum: one byte per kind, never 0 (so a zero `user_data` is no kind).
pub trait Op: Copy + Eq + Debug + 'static {
    /// Every kind, for decoding.
    const ALL: &'static [Self];
    fn code(self) -> u8;

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }
}

/// Declares an operation-kind enum and its [`Op`] implementation: codes count from 1, in
/// the order the kinds are written.
macro_rules! op_kinds {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $kind:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        $vis enum $name {
            $($(#[$vmeta])* $kind,)+
        }

        impl $crate::uring::Op for $name {
            const ALL: &'static [Self] = &[$($name::$kind,)+];
            fn code(self) -> u8 {
                self as u8 + 1
            }
        }
    };
}
pub(crate) use op_kinds;

/// The generation counter's width: it wraps at 2^24.
pub const GEN_MASK: u32 = 0xFF_FFFF;

/// Decoded `user_data`. The generation makes a late completion for a closed connection
/// unmistakable for its slot's next tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData<K> {
    pub kind: K,
    pub generation: u32,
    pub slot: u32,
}

impl<K: Op> UserData<K> {
    pub fn new(kind: K, slot: u32, generation: u32) -> Self {
        UserData {
            kind,
            generation: generation & GEN_MASK,
            slot,
        }
    }

    pub fn encode(self) -> u64 {
        u64::from(self.kind.code()) << 56
            | u64::from(self.generation & GEN_MASK) << 32
            | u64::from(self.slot)
    }

    /// None for a value this user never encodes.
    pub fn decode(v: u64) -> Option<Self> {
        Some(UserData {
            kind: K::from_code((v >> 56) as u8)?,
            generation: (v >> 32) as u32 & GEN_MASK,
            slot: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    op_kinds! {
        enum Kind {
            A,
            B,
        }
    }

    #[test]
    fn user_data_round_trips() {
        for &kind in Kind::ALL {
            let ud = UserData::new(kind, 0xDEAD_BEEF, 0x12_3456);
            assert_eq!(UserData::decode(ud.encode()), Some(ud));
        }
    }

    #[test]
    fn generation_wraps_at_24_bits() {
        let ud = UserData::new(Kind::A, 7, GEN_MASK + 2);
        assert_eq!(ud.generation, 1);
        assert_eq!(UserData::<Kind>::decode(ud.encode()).unwrap().generation, 1);
    }

    #[test]
    fn unknown_user_data_is_none() {
        assert_eq!(UserData::<Kind>::decode(0), None);
        assert_eq!(UserData::<Kind>::decode(0xFF << 56), None);
    }
}
