//! RFC 3339 times in UTC, to the second, without a date library: the proleptic Gregorian
//! calendar by days-from-civil arithmetic (Howard Hinnant's algorithms). genfs writes times as
//! `2026-11-22T05:30:00Z`; users may also type fractions of a second (dropped) and offsets.

/// Days since 1970-01-01 of a (year, month 1..=12, day 1..=31) date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let mp = (m as i64 + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d as i64 - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Parses an RFC 3339 date-time (`2026-11-22T05:30:00Z`, `2026-11-22T07:30:00.25+02:00`; `t`,
/// `z` and a space separator are accepted too) into seconds since the Unix epoch, rounding a
/// fraction of a second down. `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = i64::from(oh * 3600 + om * 60);
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let local = days_from_civil(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    Some(local - offset)
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
    fn known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_rfc3339("2026-11-22T05:30:00Z"), Some(1_795_325_400));
        assert_eq!(format_rfc3339(1_795_325_400), "2026-11-22T05:30:00Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1));
    }

    #[test]
    fn round_trips_over_four_centuries() {
        // Every day boundary ±1 s from 1900 to 2300 (covers 1900 and 2100, not leap, and 2000).
        let start = days_from_civil(1900, 1, 1);
        let end = days_from_civil(2300, 1, 1);
        let mut prev = None;
        for day in start..end {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
            if let Some((py, pm, pd)) = prev {
                let next_in_month = d == pd + 1 && m == pm && y == py;
                let new_month =
                    d == 1 && pd == days_in_month(py, pm) && (m == pm + 1 || (m == 1 && pm == 12));
                assert!(next_in_month || new_month, "{py}-{pm}-{pd} -> {y}-{m}-{d}");
            }
            prev = Some((y, m, d));
            for t in [day * 86_400 - 1, day * 86_400, day * 86_400 + 43_210] {
                assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t), "{}", format_rfc3339(t));
            }
        }
    }

    #[test]
    fn accepts_offsets_fractions_and_variants() {
        let z = parse_rfc3339("2026-11-22T05:30:00Z");
        assert_eq!(parse_rfc3339("2026-11-22T07:30:00+02:00"), z);
        assert_eq!(parse_rfc3339("2026-11-22T00:00:00-05:30"), parse_rfc3339("2026-11-22T05:30:00Z"));
        assert_eq!(parse_rfc3339("2026-11-22T05:30:00.999999Z"), z);
        assert_eq!(parse_rfc3339("2026-11-22t05:30:00z"), z);
        assert_eq!(parse_rfc3339("2026-11-22 05:30:00Z"), z);
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
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
            "2026-11-22T05:30:00+24:00",
            "2026-11-22T05:30:00Zjunk",
            "2026-11-22X05:30:00Z",
            "+026-11-22T05:30:00Z",
            "２026-11-22T05:30:00Z",
            "3",
            "-1",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
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
