//! The echo protocol: the reply to any bytes is those bytes, in order; when the peer
//! half-closes, the connection closes once everything received has been sent back.
//!
//! Both engines send a reply straight from the bytes they received where they can (the
//! Proactor from the provided buffer, the Reactor from its read buffer); `reply` is what the
//! Proactor does when those bytes must be kept because a send is still in flight.

/// Appends the reply to `input` to `out`.
pub fn reply(input: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(input);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reply_is_the_input_appended_in_order() {
        let mut out = b"ab".to_vec();
        super::reply(b"cd", &mut out);
        assert_eq!(out, b"abcd");
    }
}
