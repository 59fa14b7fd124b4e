//! The load generator's check of answers: frames each answer, reads its status and compares
//! its body with the expected one, whatever the splits.

use super::{Match, is_tchar, is_value_byte};

/// One answer as the load generator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The body was exactly the expected bytes.
    pub body_ok: bool,
}

/// Answers the load generator cannot frame: not HTTP/1.x, a head over 64 KiB, or a body
/// without Content-Length (our requests never ask for one that needs another framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    Version,
    Status,
    Reason,
    LineStart,
    Name,
    Value,
    Body,
}

/// The most head bytes one answer may have.
const MAX_ANSWER_HEAD: u32 = 64 * 1024;
const ANSWER_NAMES: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];

/// The load generator's reader of answers: frames each, reads its status and compares its
/// body with the expected one, whatever the splits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCheck {
    state: RState,
    cr: bool,
    head_bytes: u32,
    at: u8,
    status: u16,
    name: Match,
    header: Option<u8>,
    digits: Option<u64>,
    content_length: Option<u64>,
    transfer_coded: bool,
    body_pos: u64,
    body_ok: bool,
}

impl Default for ResponseCheck {
    fn default() -> Self {
        ResponseCheck::new()
    }
}

impl ResponseCheck {
    pub fn new() -> ResponseCheck {
        ResponseCheck {
            state: RState::Version,
            cr: false,
            head_bytes: 0,
            at: 0,
            status: 0,
            name: Match::new(&ANSWER_NAMES),
            header: None,
            digits: None,
            content_length: None,
            transfer_coded: false,
            body_pos: 0,
            body_ok: true,
        }
    }

    /// Reads `input`, calling `done` for every answer it completes (1xx answers are
    /// skipped: a final one follows).
    pub fn on_input(
        &mut self,
        input: &[u8],
        expected_body: &[u8],
        mut done: impl FnMut(Answer),
    ) -> Result<(), Malformed> {
        let mut i = 0;
        while i < input.len() {
            if self.state == RState::Body {
                let left = self.content_length.unwrap_or(0) - self.body_pos;
                let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                let from = usize::try_from(self.body_pos).unwrap_or(usize::MAX);
                let want = expected_body.get(from..).and_then(|e| e.get(..n));
                self.body_ok &= want == Some(&input[i..i + n]);
                self.body_pos += n as u64;
                i += n;
                if self.body_pos == self.content_length.unwrap_or(0) {
                    self.complete(expected_body, &mut done);
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.head_bytes += 1;
            if self.head_bytes > MAX_ANSWER_HEAD {
                return Err(Malformed);
            }
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    return Err(Malformed);
                }
            } else if b == b'\r'
                && matches!(
                    self.state,
                    RState::Reason | RState::LineStart | RState::Value
                )
            {
                self.cr = true;
                continue;
            }
            self.step(b, expected_body, &mut done)?;
        }
        Ok(())
    }

    fn step(
        &mut self,
        b: u8,
        expected_body: &[u8],
        done: &mut impl FnMut(Answer),
    ) -> Result<(), Malformed> {
        match self.state {
            RState::Version => {
                const FORM: &[u8] = b"HTTP/1.d ";
                let ok = match FORM.get(usize::from(self.at)) {
                    Some(b'd') => b.is_ascii_digit(),
                    Some(&c) => c == b,
                    None => false,
                };
                if !ok {
                    return Err(Malformed);
                }
                self.at += 1;
                if usize::from(self.at) == FORM.len() {
                    self.state = RState::Status;
                    self.at = 0;
                }
            }
            RState::Status => match (self.at, b) {
                (0..=2, b'0'..=b'9') => {
                    self.status = self.status * 10 + u16::from(b - b'0');
                    self.at += 1;
                }
                (3, b' ') => self.state = RState::Reason,
                _ => return Err(Malformed),
            },
            RState::Reason => match b {
                b'\n' => self.state = RState::LineStart,
                _ if is_value_byte(b) => {}
                _ => return Err(Malformed),
            },
            RState::LineStart => match b {
                b'\n' => self.end_head(expected_body, done)?,
                _ if is_tchar(b) => {
                    self.name = Match::new(&ANSWER_NAMES);
                    self.name.push(b.to_ascii_lowercase(), &ANSWER_NAMES);
                    self.state = RState::Name;
                }
                _ => return Err(Malformed),
            },
            RState::Name => match b {
                b':' => {
                    self.header = self.name.found(&ANSWER_NAMES).map(|h| h as u8);
                    self.digits = None;
                    self.transfer_coded |= self.header == Some(1);
                    self.state = RState::Value;
                }
                _ if is_tchar(b) => self.name.push(b.to_ascii_lowercase(), &ANSWER_NAMES),
                _ => return Err(Malformed),
            },
            RState::Value => match b {
                b'\n' => {
                    if self.header == Some(0) {
                        let v = self.digits.ok_or(Malformed)?;
                        if self.content_length.is_some_and(|c| c != v) {
                            return Err(Malformed);
                        }
                        self.content_length = Some(v);
                    }
                    self.state = RState::LineStart;
                }
                b'0'..=b'9' if self.header == Some(0) => {
                    let v = self.digits.unwrap_or(0);
                    let v = v
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(b - b'0')));
                    self.digits = Some(v.ok_or(Malformed)?);
                }
                b' ' | b'\t' => {}
                _ if self.header == Some(0) => return Err(Malformed),
                _ if is_value_byte(b) => {}
                _ => return Err(Malformed),
            },
            RState::Body => unreachable!("handled in on_input"),
        }
        Ok(())
    }

    fn end_head(
        &mut self,
        expected_body: &[u8],
        done: &mut impl FnMut(Answer),
    ) -> Result<(), Malformed> {
        let bodiless =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        if self.transfer_coded || (self.content_length.is_none() && !bodiless) {
            return Err(Malformed);
        }
        if bodiless {
            self.content_length = Some(0);
        }
        self.state = RState::Body;
        if self.content_length == Some(0) {
            self.complete(expected_body, done);
        }
        Ok(())
    }

    fn complete(&mut self, expected_body: &[u8], done: &mut impl FnMut(Answer)) {
        let status = self.status;
        let body_ok = self.body_ok && self.body_pos == expected_body.len() as u64;
        *self = ResponseCheck::new();
        if !(100..200).contains(&status) {
            done(Answer { status, body_ok });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::BODY;
    use crate::proto::http::testing::{OK, answer};

    fn answers(input: &[u8], expected: &[u8]) -> Result<Vec<Answer>, Malformed> {
        let mut got = Vec::new();
        ResponseCheck::new().on_input(input, expected, |a| got.push(a))?;
        Ok(got)
    }

    #[test]
    fn the_check_reads_status_and_body_whatever_the_split() {
        let (text, _) = answer(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        let stream = [b"HTTP/1.1 100 Continue\r\n\r\n", text.as_bytes()].concat();
        let whole = answers(&stream, BODY).unwrap();
        let ok = Answer {
            status: 200,
            body_ok: true,
        };
        let not_found = Answer {
            status: 404,
            body_ok: false,
        };
        assert_eq!(whole, [ok, not_found, ok]);
        for cut in 0..=stream.len() {
            let mut c = ResponseCheck::new();
            let mut got = Vec::new();
            c.on_input(&stream[..cut], BODY, |a| got.push(a)).unwrap();
            c.on_input(&stream[cut..], BODY, |a| got.push(a)).unwrap();
            assert_eq!(got, whole, "cut at {cut}");
        }
        let wrong = OK.replace("World", "Worle");
        assert_eq!(
            answers(wrong.as_bytes(), BODY).unwrap(),
            [Answer {
                status: 200,
                body_ok: false
            }]
        );
        let longer = OK.replace("13", "14") + "!";
        assert!(!answers(longer.as_bytes(), BODY).unwrap()[0].body_ok);
    }

    #[test]
    fn answers_the_check_cannot_frame_are_malformed() {
        assert_eq!(
            answers(b"HTTP/1.1 200 OK\r\n\r\nHello", BODY),
            Err(Malformed)
        );
        assert_eq!(
            answers(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                BODY
            ),
            Err(Malformed)
        );
        assert_eq!(answers(b"SSH-2.0-OpenSSH\r\n", BODY), Err(Malformed));
        assert_eq!(answers(b"HTTP/1.1 20 OK\r\n", BODY), Err(Malformed));
        assert_eq!(
            answers(b"HTTP/1.1 204 No Content\r\n\r\n", BODY)
                .unwrap()
                .len(),
            1
        );
    }
}
