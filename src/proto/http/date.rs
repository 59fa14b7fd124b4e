//! The `Date` header's value (RFC 9110 5.6.7, IMF-fixdate), formatted once per second rather
//! than per answer.

use std::time::{SystemTime, UNIX_EPOCH};

/// The `Date` header's value (IMF-fixdate), formatted once per second rather than per
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    secs: u64,
    text: [u8; 29],
}

impl Date {
    /// The date `unix_secs` seconds after the epoch.
    pub fn at(unix_secs: u64) -> Date {
        const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
        const MONTHS: [&[u8; 3]; 12] = [
            b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
            b"Dec",
        ];
        let days = unix_secs / 86_400;
        let s = unix_secs % 86_400;
        // Days to civil date: Howard Hinnant's `civil_from_days`, for days since 1970.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        let mut text = *b"Thu, 01 Jan 1970 00:00:00 GMT";
        text[..3].copy_from_slice(DAYS[(days % 7) as usize]);
        let two = |t: &mut [u8], v: u64| {
            t[0] = b'0' + (v / 10 % 10) as u8;
            t[1] = b'0' + (v % 10) as u8;
        };
        two(&mut text[5..7], day);
        text[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
        two(&mut text[12..14], year / 100);
        two(&mut text[14..16], year);
        two(&mut text[17..19], s / 3600);
        two(&mut text[20..22], s / 60 % 60);
        two(&mut text[23..25], s % 60);
        Date {
            secs: unix_secs,
            text,
        }
    }

    pub fn now() -> Date {
        Date::at(unix_now())
    }

    /// Re-formats if the second has changed (a vDSO clock read otherwise).
    pub fn refresh(&mut self) {
        let now = unix_now();
        if now != self.secs {
            *self = Date::at(now);
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::testing::date;

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(date().as_bytes(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(Date::at(0).as_bytes(), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            Date::at(951_782_400).as_bytes(),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            Date::at(4_102_444_799).as_bytes(),
            b"Thu, 31 Dec 2099 23:59:59 GMT"
        );
        let mut d = Date::at(0);
        d.refresh();
        assert_ne!(d.as_bytes(), Date::at(0).as_bytes());
    }
}
