//! The request parser: RESP2 multibulk requests (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) and
//! inline commands (`GET k\r\n`), as Redis 7.0 reads them (networking.c,
//! processMultibulkBuffer and processInlineBuffer; sds.c, sdssplitargs). `parse` reads one
//! command from the start of the bytes it is given; of a partial multibulk command it says
//! how far it is known good (`Resume`), so that the next input is checked from there and
//! the command parsed once, when whole. The arguments of a multibulk command are slices of
//! the input: a command that arrived whole is neither copied nor allocated for (up to
//! `SMALL` arguments).

use std::fmt;

use super::Limits;

/// The longest inline command, and the longest `*N` / `$N` line (Redis's
/// PROTO_INLINE_MAX_SIZE).
const INLINE_MAX: usize = 64 * 1024;

/// Arguments kept without allocating: every command of the load generator fits.
const SMALL: usize = 8;

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No whole command yet; the first `usize` bytes were empty commands (blank lines,
    /// `*0`), to be dropped; how far the partial one is known good.
    Partial(usize, Resume),
    /// A multibulk command of the first `usize` bytes: its arguments are in `Args`.
    Multibulk(usize),
    /// An inline command of the first `usize` bytes, its words unquoted.
    Inline(usize, Vec<Vec<u8>>),
    /// A malformed request; the connection closes.
    Error(Bad),
}

/// How far a partial multibulk command is known good: the offset from its start of its
/// next `$` line, and the arguments still to come (none: nothing known). The next input is
/// checked from there (`resume`), not from the start: a command of many small arguments
/// arriving slowly would otherwise cost time quadratic in its arguments.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    at: u32,
    left: u32,
}

/// Checks the partial multibulk command at the start of `data` on from `r`: false while it
/// is still partial; true once it may be whole or malformed (`parse` it then).
pub fn resume(data: &[u8], limits: &Limits, r: &mut Resume) -> bool {
    while r.left > 0 {
        let rest = &data[r.at as usize..];
        let end = match number_line(rest, "") {
            Ok(None) => return false,
            Ok(Some((Some(len), next))) if rest[0] == b'$' && len >= 0 => {
                if len as u64 > limits.max_bulk_bytes {
                    return true;
                }
                next + len as usize + 2
            }
            _ => return true,
        };
        if rest.len() < end {
            return false;
        }
        let Ok(at) = u32::try_from(r.at as usize + end) else {
            return true;
        };
        r.at = at;
        r.left -= 1;
    }
    true
}

/// A malformed request: Redis's message after `Protocol error: `.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    Msg(&'static str),
    /// A multibulk argument that does not start with `$`: the byte it starts with.
    Dollar(u8),
}

impl fmt::Display for Bad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bad::Msg(m) => f.write_str(m),
            Bad::Dollar(b) => write!(f, "expected '$', got '{}'", char::from(b)),
        }
    }
}

impl Bad {
    /// `-ERR Protocol error: ...\r\n`, as Redis writes it: `%c` of a NUL ends the message
    /// (sds's strlen), and CR and LF become spaces (addReplyErrorLength).
    pub fn reply(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR Protocol error: ");
        match self {
            Bad::Msg(m) => out.extend_from_slice(m.as_bytes()),
            Bad::Dollar(b) => {
                out.extend_from_slice(b"expected '$', got '");
                match b {
                    0 => {}
                    b'\r' | b'\n' => out.extend_from_slice(b" '"),
                    b => out.extend_from_slice(&[b, b'\'']),
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The arguments of one multibulk command, slices of the input.
#[derive(Debug, Default)]
pub struct Args<'a> {
    small: [&'a [u8]; SMALL],
    n: usize,
    /// All of them, once there are more than `SMALL`.
    big: Vec<&'a [u8]>,
}

impl<'a> Args<'a> {
    pub fn clear(&mut self) {
        self.n = 0;
        self.big.clear();
    }

    fn push(&mut self, a: &'a [u8]) {
        if self.n < SMALL && self.big.is_empty() {
            self.small[self.n] = a;
            self.n += 1;
        } else {
            if self.big.is_empty() {
                self.big.extend_from_slice(&self.small[..self.n]);
            }
            self.big.push(a);
        }
    }

    pub fn as_slice(&self) -> &[&'a [u8]] {
        if self.big.is_empty() {
            &self.small[..self.n]
        } else {
            &self.big
        }
    }
}

/// Reads the command at the start of `data`.
pub fn parse<'a>(data: &'a [u8], limits: &Limits, args: &mut Args<'a>) -> Parsed {
    let mut at = 0;
    loop {
        args.clear();
        let rest = &data[at..];
        let Some(&first) = rest.first() else {
            return Parsed::Partial(at, Resume::default());
        };
        // Redis picks the request type by the first byte.
        let r = if first == b'*' {
            multibulk(rest, limits, args).map(|r| r.map(|(used, n)| (used, n, None)))
        } else {
            inline(rest).map(|r| {
                r.ok_or_else(Resume::default)
                    .map(|(used, w)| (used, w.len(), Some(w)))
            })
        };
        match r {
            Err(e) => return Parsed::Error(e),
            Ok(Err(resume)) => return Parsed::Partial(at, resume),
            // A blank line, or `*0` / `*-1`: nothing to run.
            Ok(Ok((used, 0, _))) => at += used,
            Ok(Ok((used, _, None))) => return Parsed::Multibulk(at + used),
            Ok(Ok((used, _, Some(words)))) => return Parsed::Inline(at + used, words),
        }
    }
}

/// Where the line of `rest` ends (at `end`), as C's strchr finds it: a NUL before it hides
/// it. Over `INLINE_MAX` bytes without it is `too_big`; so is a longer line, whatever the
/// split (Redis checks only what one read brought, so it takes a line of up to 80 KiB that
/// arrives in one read: not a split to depend on).
fn line_end(rest: &[u8], end: u8, too_big: &'static str) -> Result<Option<usize>, Bad> {
    match rest.iter().position(|&b| b == end || b == 0) {
        Some(p) if rest[p] == end && p <= INLINE_MAX => Ok(Some(p)),
        Some(p) if rest[p] == end => Err(Bad::Msg(too_big)),
        _ if rest.len() > INLINE_MAX => Err(Bad::Msg(too_big)),
        _ => Ok(None),
    }
}

/// A `*N` or `$N` line at the start of `rest`: its number (if one) and the bytes it takes.
/// Like Redis, the byte after the CR is not looked at.
fn number_line(rest: &[u8], too_big: &'static str) -> Result<Option<(Option<i64>, usize)>, Bad> {
    let Some(cr) = line_end(rest, b'\r', too_big)? else {
        return Ok(None);
    };
    if rest.len() < cr + 2 {
        return Ok(None);
    }
    Ok(Some((string2ll(rest.get(1..cr).unwrap_or(&[])), cr + 2)))
}

/// A multibulk request: the bytes it takes and its argument count; or, not whole yet, how
/// far it is known good.
fn multibulk<'a>(
    rest: &'a [u8],
    limits: &Limits,
    args: &mut Args<'a>,
) -> Result<Result<(usize, usize), Resume>, Bad> {
    let Some((count, mut i)) = number_line(rest, "too big mbulk count string")? else {
        return Ok(Err(Resume::default()));
    };
    let count = match count {
        Some(n) if n <= i64::from(i32::MAX) && n <= i64::from(limits.max_multibulk) => n,
        _ => return Err(Bad::Msg("invalid multibulk length")),
    };
    for k in 0..count.max(0) {
        // Known good up to argument k, at i.
        let progress = Resume {
            at: u32::try_from(i).unwrap_or(0),
            left: if i > u32::MAX as usize {
                0
            } else {
                (count - k) as u32
            },
        };
        let Some((len, next)) = number_line(&rest[i..], "too big bulk count string")? else {
            return Ok(Err(progress));
        };
        if rest[i] != b'$' {
            return Err(Bad::Dollar(rest[i]));
        }
        let len = match len {
            Some(n) if n >= 0 && n as u64 <= limits.max_bulk_bytes => n as usize,
            _ => return Err(Bad::Msg("invalid bulk length")),
        };
        let from = i + next;
        // Redis skips the two bytes after a bulk without looking at them.
        if rest.len() - from < len + 2 {
            return Ok(Err(progress));
        }
        args.push(&rest[from..from + len]);
        i = from + len + 2;
    }
    Ok(Ok((i, count.max(0) as usize)))
}

/// An inline command's length and words.
type Words = (usize, Vec<Vec<u8>>);

/// An inline command: the bytes it takes and its words. Ok(None): the line has not ended.
fn inline(rest: &[u8]) -> Result<Option<Words>, Bad> {
    let Some(nl) = line_end(rest, b'\n', "too big inline request")? else {
        return Ok(None);
    };
    let mut line = &rest[..nl];
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    match split_args(line) {
        Some(words) => Ok(Some((nl + 1, words))),
        None => Err(Bad::Msg("unbalanced quotes in request")),
    }
}

/// C's isspace in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Redis's sdssplitargs: words split by spaces; "double quotes" with `\n \r \t \b \a \xHH`
/// and `\<any>` escapes, 'single quotes' with `\'`; a closing quote must be followed by a
/// space or the end. None: unbalanced quotes. `line` holds no NUL (`line_end` stops there).
fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // The C string: 0 past the end.
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut words = Vec::new();
    let mut p = 0;
    loop {
        while at(p) != 0 && is_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Some(words);
        }
        let (mut inq, mut insq) = (false, false);
        let mut cur = Vec::new();
        loop {
            let c = at(p);
            if inq {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && let (Some(h), Some(l)) = (hex(at(p + 2)), hex(at(p + 3)))
                {
                    cur.push((h * 16 + l) as u8);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    cur.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        o => o,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else if insq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        if c != 0 {
                            p += 1;
                        }
                        break;
                    }
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    c => cur.push(c),
                }
            }
            p += 1;
        }
        words.push(cur);
    }
}

/// Redis's string2ll: an optional `-`, then digits without a leading zero (or `0` alone),
/// within i64 and under 21 bytes; nothing else (no `+`, no spaces).
pub fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, s),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        0i64.checked_sub_unsigned(v)
    } else {
        i64::try_from(v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Option<Vec<String>> {
        split_args(line.as_bytes()).map(|w| {
            w.into_iter()
                .map(|w| String::from_utf8_lossy(&w).into_owned())
                .collect()
        })
    }

    #[test]
    fn inline_quoting_is_sdssplitargs() {
        assert_eq!(
            words("  set  a b "),
            Some(vec!["set".into(), "a".into(), "b".into()])
        );
        assert_eq!(words(r#"set "a b" 'c d'"#).unwrap()[1..], ["a b", "c d"]);
        assert_eq!(words(r#""\x41\n\t\\\"\q""#).unwrap(), ["A\n\t\\\"q"]);
        assert_eq!(words(r#""\x4g""#).unwrap(), ["x4g"]);
        assert_eq!(words(r"'it\'s'").unwrap(), ["it's"]);
        assert_eq!(words(r#"a"b c"d"#), None, "a closing quote then a letter");
        assert_eq!(words(r#"a"b c" d"#).unwrap(), ["ab c", "d"]);
        assert_eq!(words(r#""abc"#), None);
        assert_eq!(words("'abc"), None);
        assert_eq!(
            words("a\x0bb").unwrap(),
            ["a\x0bb"],
            "VT splits only between words"
        );
        assert_eq!(words("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn string2ll_is_strict() {
        for (s, v) in [("0", Some(0)), ("-1", Some(-1)), ("12", Some(12))] {
            assert_eq!(string2ll(s.as_bytes()), v);
        }
        for s in [
            "",
            "-",
            "-0",
            "01",
            "+1",
            " 1",
            "1 ",
            "1a",
            "9223372036854775808",
        ] {
            assert_eq!(string2ll(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
    }

    fn one(data: &[u8], limits: &Limits) -> Result<(usize, Vec<Vec<u8>>), Option<String>> {
        let mut args = Args::default();
        match parse(data, limits, &mut args) {
            Parsed::Partial(..) => Err(None),
            Parsed::Multibulk(n) => Ok((n, args.as_slice().iter().map(|a| a.to_vec()).collect())),
            Parsed::Inline(n, w) => Ok((n, w)),
            Parsed::Error(e) => Err(Some(e.to_string())),
        }
    }

    #[test]
    fn multibulk_whole_and_every_prefix() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
        let l = Limits::default();
        assert_eq!(
            one(req, &l),
            Ok((req.len(), vec![b"SET".to_vec(), b"k".to_vec(), vec![]]))
        );
        for cut in 0..req.len() {
            assert_eq!(one(&req[..cut], &l), Err(None), "cut at {cut}");
        }
        let many = b"*10\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n$1\r\ng\r\n$1\r\nh\r\n$1\r\ni\r\n$1\r\nj\r\n";
        assert_eq!(one(many, &l).unwrap().1.len(), 10);
        assert_eq!(one(b"*0\r\n*-1\r\n\r\n", &l), Err(None));
    }

    #[test]
    fn errors_are_redis_messages() {
        let l = Limits {
            max_bulk_bytes: 10,
            max_multibulk: 3,
        };
        let err = |d: &[u8]| one(d, &l).unwrap_err().unwrap();
        assert_eq!(err(b"*4\r\n"), "invalid multibulk length");
        assert_eq!(err(b"*x\r\n"), "invalid multibulk length");
        assert_eq!(err(b"*1\r\n$11\r\n"), "invalid bulk length");
        assert_eq!(err(b"*1\r\n$-1\r\n"), "invalid bulk length");
        assert_eq!(err(b"*1\r\n:1\r\n"), "expected '$', got ':'");
        assert_eq!(err(b"\"a\r\n"), "unbalanced quotes in request");
        let long = vec![b'a'; INLINE_MAX + 1];
        assert_eq!(err(&long), "too big inline request");
        let mut star = b"*".to_vec();
        star.extend_from_slice(&long);
        assert_eq!(err(&star), "too big mbulk count string");
        let mut dollar = b"*1\r\n$".to_vec();
        dollar.extend_from_slice(&long);
        assert_eq!(err(&dollar), "too big bulk count string");
        // A NUL hides the line's end, as strchr does; the limit still applies.
        assert_eq!(one(b"GET a\0\r\n", &l), Err(None));
    }
}
