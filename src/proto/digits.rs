//! Numbers as decimal text, straight into a buffer: every request's reply header, journal
//! record and access log line has some, and `write!` brings its formatting machinery to
//! each (3 % of the Proactor's CPU serving Redis with the log and the append-only file).

/// `n` in decimal, in `buf`.
pub fn text(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = n;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Appends `n` in decimal.
pub fn push(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(text(n, &mut [0; 20]));
}

/// Appends `n` in decimal, with its sign.
pub fn push_signed(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push(out, n.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_display_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX / 10, u64::MAX] {
            let mut out = Vec::new();
            push(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for n in [0, -1, 1, -10, i64::MIN, i64::MAX] {
            let mut out = b"x".to_vec();
            push_signed(&mut out, n);
            assert_eq!(out, format!("x{n}").as_bytes());
        }
    }
}
