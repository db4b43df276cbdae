//! kiq's own crontab parser and matcher (the design card names it; no cron crate).
//!
//! Five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12
//! or JAN-DEC), day of week (0-7 or SUN-SAT; 0 and 7 are Sunday), separated by
//! spaces or tabs; or a macro (`@yearly`, `@annually`, `@monthly`, `@weekly`,
//! `@daily`, `@midnight`, `@hourly`). A field is a comma list of `*`, `N`,
//! `A-B`, `*/S` or `A-B/S` (steps count from the start of the range). Names
//! work in any case, in ranges too. Input is strict: an out-of-range value, an
//! empty field or list item, a reversed range, a zero step, a wrong field
//! count or trailing text is an error naming the field and the text.
//!
//! Days follow standard cron (as croniter does): when both day fields are
//! restricted a time matches if *either* matches; when one is unrestricted
//! (`*`, or every value while the other field uses `*`), both must match.
//! Everything is UTC, at minute resolution.

use std::fmt;

use crate::error::{KiqError, Result};
use crate::timestamp::civil_from_days;

/// A crontab that failed to parse: `KiqError::Crontab`, its message naming the field and text.
fn cron_error(message: String) -> KiqError {
    KiqError::Crontab(message)
}

const NAMES: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
/// No schedule needs more than this to recur (28 years cover every weekday/leap-day combination).
const SEARCH_YEARS: i64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Crontab {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Bits 0-6, Sunday = 0.
    weekdays: u64,
    /// Both day fields restricted: a day matches if either does.
    day_or: bool,
}

struct Field {
    bits: u64,
    /// The field has a bare `*` item.
    star: bool,
    /// The field's text contains `*` anywhere (as `*/2`).
    mentions_star: bool,
}

fn bits(lo: u32, hi: u32) -> u64 {
    (lo..=hi).fold(0, |b, v| b | (1u64 << v))
}

fn value(text: &str, field: usize, whole: &str) -> Result<u32> {
    let names: &[&str] = match field {
        3 => &MONTHS,
        4 => &DAYS,
        _ => &[],
    };
    let upper = text.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(if field == 3 { i as u32 + 1 } else { i as u32 });
    }
    let (lo, hi) = RANGES[field];
    let bad = |why: String| cron_error(format!("crontab {whole:?}: {} field {text:?}: {why}", NAMES[field]));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 3 {
        let hint = if names.is_empty() {
            String::new()
        } else {
            format!(" or a name ({}..{})", names[0], names[names.len() - 1])
        };
        return Err(bad(format!("not a number{hint}")));
    }
    let n: u32 = text.parse().map_err(|_| bad("not a number".into()))?;
    if n < lo || n > hi {
        return Err(bad(format!("{n} is out of range {lo}-{hi}")));
    }
    Ok(n)
}

fn parse_field(text: &str, field: usize, whole: &str) -> Result<Field> {
    let bad = |why: &str| cron_error(format!("crontab {whole:?}: {} field {text:?}: {why}", NAMES[field]));
    let (lo, hi) = RANGES[field];
    let mut out = Field { bits: 0, star: false, mentions_star: text.contains('*') };
    for item in text.split(',') {
        if item.is_empty() {
            return Err(bad("empty list item"));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = match s.parse() {
                    Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => return Err(bad(&format!("step {s:?} is not a number"))),
                };
                if step == 0 {
                    return Err(bad("a step must be at least 1"));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            if step.is_none() {
                out.star = true;
            }
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a, field, whole)?, value(b, field, whole)?);
            if a > b {
                return Err(bad(&format!("range {range:?} runs backwards")));
            }
            (a, b)
        } else {
            if step.is_some() {
                return Err(bad(&format!("a step needs a range or * before it, not {range:?}")));
            }
            let v = value(range, field, whole)?;
            (v, v)
        };
        let step = step.unwrap_or(1);
        let mut v = start;
        while v <= end {
            out.bits |= 1u64 << v;
            v += step;
        }
    }
    if field == 4 && out.bits & (1 << 7) != 0 {
        // 7 is another name for Sunday.
        out.bits = (out.bits & !(1 << 7)) | 1;
    }
    Ok(out)
}

impl Crontab {
    /// Parses a crontab; see the module docs for the grammar.
    pub fn parse(expr: &str) -> Result<Self> {
        let trimmed = expr.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            m if m.starts_with('@') => {
                return Err(cron_error(format!(
                    "crontab {expr:?}: unknown macro (use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
                )));
            }
            _ => trimmed,
        };
        let parts: Vec<&str> = expanded.split([' ', '\t']).filter(|p| !p.is_empty()).collect();
        if parts.len() != 5 {
            return Err(cron_error(format!(
                "crontab {expr:?} has {} fields; it needs 5 (minute hour day-of-month month day-of-week) or a macro like @daily",
                parts.len()
            )));
        }
        let f: Vec<Field> = parts.iter().enumerate().map(|(i, p)| parse_field(p, i, expr)).collect::<Result<_>>()?;
        let full_days = bits(1, 31);
        let full_weekdays = bits(0, 6);
        let dom_free = f[2].star || (f[2].bits == full_days && f[4].mentions_star);
        let dow_free = f[4].star || (f[4].bits == full_weekdays && f[2].mentions_star);
        Ok(Self {
            minutes: f[0].bits,
            hours: f[1].bits,
            days: f[2].bits,
            months: f[3].bits,
            weekdays: f[4].bits,
            day_or: !dom_free && !dow_free,
        })
    }

    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let dom = self.days & (1 << day) != 0;
        let dow = self.weekdays & (1 << weekday) != 0;
        if self.day_or { dom || dow } else { dom && dow }
    }

    /// Whether the minute containing `secs` (epoch seconds, UTC) matches.
    pub fn matches(&self, secs: i64) -> bool {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (_, month, day) = civil_from_days(days);
        let hour = (rem / 3600) as u32;
        let minute = (rem % 3600 / 60) as u32;
        self.minutes & (1 << minute) != 0
            && self.hours & (1 << hour) != 0
            && self.months & (1 << month) != 0
            && self.day_matches(day, weekday(days))
    }

    /// The first matching minute (epoch seconds) strictly after `secs`, or
    /// `None` when none comes within 32 years (a day that never exists, as
    /// February 30th).
    pub fn next_after(&self, secs: i64) -> Option<i64> {
        let start = (secs.div_euclid(60) + 1) * 60;
        let first_day = start.div_euclid(86_400);
        let first_minute = (start.rem_euclid(86_400) / 60) as u32;
        let (y0, _, _) = civil_from_days(first_day);
        let last_day = days_from_civil(y0 + SEARCH_YEARS, 1, 1);
        let mut day = first_day;
        while day < last_day {
            let (y, month, dom) = civil_from_days(day);
            if self.months & (1 << month) == 0 {
                // Skip to the first day of the next month.
                let (ny, nm) = if month == 12 { (y + 1, 1) } else { (y, month + 1) };
                day = days_from_civil(ny, nm, 1);
                continue;
            }
            if self.day_matches(dom, weekday(day)) {
                let from = if day == first_day { first_minute } else { 0 };
                for m in from..1440 {
                    let (hour, minute) = (m / 60, m % 60);
                    if self.hours & (1 << hour) != 0 && self.minutes & (1 << minute) != 0 {
                        return Some(day * 86_400 + i64::from(m) * 60);
                    }
                }
            }
            day += 1;
        }
        None
    }
}

/// Day of the week of a day count since 1970-01-01 (a Thursday); Sunday = 0.
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days-from-civil).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn render(f: &mut fmt::Formatter<'_>, set: u64, lo: u32, hi: u32, star: bool) -> fmt::Result {
    if star {
        return f.write_str("*");
    }
    let mut first = true;
    let mut v = lo;
    while v <= hi {
        if set & (1 << v) == 0 {
            v += 1;
            continue;
        }
        let start = v;
        while v < hi && set & (1 << (v + 1)) != 0 {
            v += 1;
        }
        if !first {
            f.write_str(",")?;
        }
        first = false;
        if start == v {
            write!(f, "{start}")?;
        } else {
            write!(f, "{start}-{v}")?;
        }
        v += 1;
    }
    Ok(())
}

/// The canonical form: `*` for unrestricted fields, else value lists with
/// ranges; it parses back to an equal crontab.
impl fmt::Display for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render(f, self.minutes, 0, 59, self.minutes == bits(0, 59))?;
        f.write_str(" ")?;
        render(f, self.hours, 0, 23, self.hours == bits(0, 23))?;
        f.write_str(" ")?;
        render(f, self.days, 1, 31, !self.day_or && self.days == bits(1, 31))?;
        f.write_str(" ")?;
        render(f, self.months, 1, 12, self.months == bits(1, 12))?;
        f.write_str(" ")?;
        render(f, self.weekdays, 0, 6, !self.day_or && self.weekdays == bits(0, 6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch seconds of a UTC time.
    fn at(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    fn next(expr: &str, from: i64) -> Option<i64> {
        Crontab::parse(expr).unwrap().next_after(from)
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 59, 11_016, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(weekday(0), 4, "1970-01-01 was a Thursday");
        assert_eq!(weekday(days_from_civil(2024, 1, 7)), 0, "2024-01-07 was a Sunday");
    }

    #[test]
    fn basic_schedules() {
        let jan1 = at(2024, 1, 1, 0, 0); // a Monday
        assert_eq!(next("*/5 * * * *", jan1), Some(at(2024, 1, 1, 0, 5)));
        assert_eq!(next("0 0 * * *", jan1), Some(at(2024, 1, 2, 0, 0)));
        assert_eq!(next("@hourly", jan1 + 30), Some(at(2024, 1, 1, 1, 0)));
        assert_eq!(next("5-59/15 * * * *", jan1), Some(at(2024, 1, 1, 0, 5)));
        assert_eq!(next("0 12 * JAN-mar Mon", jan1), Some(at(2024, 1, 1, 12, 0)));
        assert_eq!(next("0 0 29 2 *", jan1), Some(at(2024, 2, 29, 0, 0)));
        assert_eq!(next("0 0 29 2 *", at(2024, 3, 1, 0, 0)), Some(at(2028, 2, 29, 0, 0)));
        assert_eq!(next("0 0 30 2 *", jan1), None);
        assert_eq!(next("@yearly", jan1), Some(at(2025, 1, 1, 0, 0)));
    }

    #[test]
    fn sunday_fires_as_0_7_and_sun() {
        let jan1 = at(2024, 1, 1, 0, 0);
        for e in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN", "@weekly", "0 0 * * 5-7"] {
            let n = next(e, at(2024, 1, 6, 23, 0)).unwrap();
            assert_eq!(weekday(n.div_euclid(86_400)), 0, "{e}");
        }
        assert!(Crontab::parse("0 0 * * 7").unwrap().matches(at(2024, 1, 7, 0, 0)));
        assert!(!Crontab::parse("0 0 * * 7").unwrap().matches(jan1));
    }

    #[test]
    fn day_fields_or_when_both_restricted() {
        let c = Crontab::parse("0 0 13 * 5").unwrap(); // the 13th, or any Friday
        assert!(c.matches(at(2024, 1, 5, 0, 0)), "a Friday");
        assert!(c.matches(at(2024, 1, 13, 0, 0)), "the 13th (a Saturday)");
        assert!(!c.matches(at(2024, 1, 6, 0, 0)));
        let and = Crontab::parse("0 0 * * 5").unwrap();
        assert!(!and.matches(at(2024, 1, 13, 0, 0)));
        // Every value, written out while the other field is restricted: still restricted (OR).
        assert!(Crontab::parse("0 0 1-31 * 1").unwrap().matches(at(2024, 1, 2, 0, 0)));
        // A step like */2 counts as restricted, as croniter has it.
        assert!(Crontab::parse("0 0 */2 * 1").unwrap().matches(at(2024, 1, 8, 0, 0)));
    }

    #[test]
    fn strict_errors_name_field_and_text() {
        for (bad, needle) in [
            ("60 * * * *", "minute field \"60\": 60 is out of range 0-59"),
            ("* 24 * * *", "hour field \"24\""),
            ("* * 0 * *", "day of month field \"0\""),
            ("* * * 13 *", "month field \"13\""),
            ("* * * * 8", "day of week field \"8\""),
            ("*/0 * * * *", "at least 1"),
            ("1,,2 * * * *", "empty list item"),
            ("5-3 * * * *", "runs backwards"),
            ("* * * * MON-FRI x", "has 6 fields"),
            ("* * * *", "has 4 fields"),
            ("MON * * * *", "minute field \"MON\": not a number"),
            ("* * * * MONDAY", "not a number or a name (SUN..SAT)"),
            ("5/15 * * * *", "a step needs a range or *"),
            ("@reboot", "unknown macro"),
            ("", "has 0 fields"),
            ("*/x * * * *", "step \"x\" is not a number"),
            ("1-2-3 * * * *", "not a number"),
            ("0005 * * * *", "not a number"),
        ] {
            let err = Crontab::parse(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn render_round_trips() {
        for e in [
            "*/15 9-17 * * MON-FRI",
            "0 0 13 * 5",
            "@weekly",
            "1,2,3,10-20/5 * * * *",
            "0 0 */2 * 0-6",
            "0 0 1-31 * 1",
            "* * * * *",
        ] {
            let c = Crontab::parse(e).unwrap();
            let again = Crontab::parse(&c.to_string()).unwrap();
            assert_eq!(c, again, "{e} -> {c}");
        }
        assert_eq!(Crontab::parse("*/15 9-17 * * MON-FRI").unwrap().to_string(), "0,15,30,45 9-17 * * 1-5");
        assert_eq!(Crontab::parse("@daily").unwrap().to_string(), "0 0 * * *");
    }
}
