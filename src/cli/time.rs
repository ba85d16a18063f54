//! Times for the command line. RFC 3339 formatting and parsing are the daemon's
//! (`crate::versions::time`); this module adds what only the CLI needs: a stricter parser for
//! times typed by users, the clock, and short ages.

pub use crate::versions::time::{format_rfc3339, parse_rfc3339};

/// Parses a time typed by a user (`FILE@2026-11-22T05:30:00Z`, offsets and fractions allowed):
/// RFC 3339 as the daemon reads it, and in addition every date and time field must be digits
/// and the date must exist (`2026-02-30` is refused rather than read as March 2).
pub fn parse_user_time(s: &str) -> Option<i64> {
    let head = s.as_bytes().get(..19)?;
    let shape_ok = head.iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => matches!(c, b'T' | b't' | b' '),
        13 | 16 => c == b':',
        _ => c.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    let t = parse_rfc3339(s)?;
    // The local date must come back unchanged from the calendar arithmetic.
    let date = &s[..10];
    let midnight = parse_rfc3339(&format!("{date}T00:00:00Z"))?;
    (format_rfc3339(midnight).get(..10) == Some(date)).then_some(t)
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// A short age: `45s`, `3m`, `2h`, `5d` (whole units, rounded down; a time in the future is `0s`).
pub fn format_age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_times_accept_offsets_fractions_and_variants() {
        let z = parse_user_time("2026-11-22T05:30:00Z");
        assert_eq!(z, Some(1_795_325_400));
        assert_eq!(parse_user_time("2026-11-22T07:30:00+02:00"), z);
        assert_eq!(parse_user_time("2026-11-22T00:00:00-05:30"), z);
        assert_eq!(parse_user_time("2026-11-22T05:30:00.999999Z"), z);
        assert_eq!(parse_user_time("2026-11-22t05:30:00z"), z);
        assert_eq!(parse_user_time("2026-11-22 05:30:00Z"), z);
        assert_eq!(parse_user_time("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(parse_user_time("1969-12-31T23:59:59Z"), Some(-1));
    }

    #[test]
    fn user_times_reject_what_is_not_rfc3339() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T05:30:00",
            "2026-11-22T05:30Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T05:60:00Z",
            "2026-11-22T05:30:00.Z",
            "2026-11-22T05:30:00+0200",
            "2026-11-22T05:30:00Zjunk",
            "2026-11-22X05:30:00Z",
            "+026-11-22T05:30:00Z",
            "2026-11-22T+5:30:00Z",
            "２026-11-22T05:30:00Z",
            "3",
            "-1",
        ] {
            assert_eq!(parse_user_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ages() {
        assert_eq!(format_age(-5), "0s");
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(59), "59s");
        assert_eq!(format_age(60), "1m");
        assert_eq!(format_age(3 * 60 + 59), "3m");
        assert_eq!(format_age(3599), "59m");
        assert_eq!(format_age(2 * 3600 + 1), "2h");
        assert_eq!(format_age(86_399), "23h");
        assert_eq!(format_age(5 * 86_400 + 7), "5d");
        assert_eq!(format_age(400 * 86_400), "400d");
    }
}
