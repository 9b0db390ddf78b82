//! Datetimes as the Horde sends them.
//!
//! The live server formats datetimes as RFC 822 (`Sat, 01 Jan 2011 00:00:00 -0000`,
//! flask-restx `dt_format="rfc822"`), while the SDK fixtures show ISO 8601
//! (`2021-01-01T00:00:00Z`). [`HordeTime`] accepts both, and the RFC 1123 form of
//! HTTP dates (`... GMT`), which `Retry-After` may carry. It is a small hand parser
//! so that the crate needs no time library; it only ever produces UTC instants.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant read from a Horde response. Serializes as RFC 3339 (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HordeTime(SystemTime);

/// A datetime string in neither RFC 822 nor ISO 8601 form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 822 or ISO 8601 datetime: {input:?}")]
pub struct TimeParseError {
    input: String,
}

impl HordeTime {
    /// Parses RFC 822 / RFC 1123 or ISO 8601 / RFC 3339.
    pub fn parse(input: &str) -> Result<Self, TimeParseError> {
        let trimmed = input.trim();
        parse_iso8601(trimmed)
            .or_else(|| parse_rfc822(trimmed))
            .map(HordeTime)
            .ok_or_else(|| TimeParseError {
                input: input.to_owned(),
            })
    }

    /// The instant as a `SystemTime`.
    pub fn system_time(self) -> SystemTime {
        self.0
    }
}

impl From<SystemTime> for HordeTime {
    fn from(time: SystemTime) -> Self {
        HordeTime(time)
    }
}

impl FromStr for HordeTime {
    type Err = TimeParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        HordeTime::parse(input)
    }
}

impl fmt::Display for HordeTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339_seconds(self.0).fmt(f)
    }
}

impl Serialize for HordeTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HordeTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HordeTime::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A civil UTC date and time, checked field by field before conversion.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    nanos: u32,
    /// Offset east of UTC in seconds; subtracted to get UTC.
    offset_seconds: i64,
}

impl Civil {
    fn to_system_time(&self) -> Option<SystemTime> {
        let days_in_month = days_in_month(self.year, self.month)?;
        if self.day == 0
            || self.day > days_in_month
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
        {
            return None;
        }
        // A leap second (:60) is folded into the next second, as humantime does.
        let seconds = days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - self.offset_seconds;
        let whole = Duration::from_secs(seconds.unsigned_abs());
        let time = if seconds >= 0 {
            UNIX_EPOCH.checked_add(whole)?
        } else {
            UNIX_EPOCH.checked_sub(whole)?
        };
        time.checked_add(Duration::from_nanos(u64::from(self.nanos)))
    }
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> Option<u32> {
    Some(match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => return None,
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A tiny cursor over ASCII input.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a str) -> Self {
        Cursor { rest: input }
    }

    fn eat(&mut self, literal: char) -> bool {
        match self.rest.strip_prefix(literal) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    /// Drops the next character.
    fn bump(&mut self) {
        let mut chars = self.rest.chars();
        chars.next();
        self.rest = chars.as_str();
    }

    /// `separator` followed by exactly `count` digits.
    fn separated_digits(&mut self, separator: char, count: usize) -> Option<u32> {
        if self.eat(separator) {
            self.digits(count)
        } else {
            None
        }
    }

    /// Exactly `count` ASCII digits.
    fn digits(&mut self, count: usize) -> Option<u32> {
        let digits = self.rest.get(..count)?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.rest = &self.rest[count..];
        digits.parse().ok()
    }

    /// Between `min` and `max` ASCII digits, as many as present.
    fn digits_between(&mut self, min: usize, max: usize) -> Option<(u32, usize)> {
        let count = self
            .rest
            .bytes()
            .take(max)
            .take_while(u8::is_ascii_digit)
            .count();
        if count < min {
            return None;
        }
        let value = self.digits(count)?;
        Some((value, count))
    }

    fn word(&mut self) -> &'a str {
        let end = self
            .rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(self.rest.len());
        let (word, rest) = self.rest.split_at(end);
        self.rest = rest;
        word
    }

    fn skip_spaces(&mut self) -> bool {
        let trimmed = self.rest.trim_start();
        let skipped = trimmed.len() != self.rest.len();
        self.rest = trimmed;
        skipped
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.fraction]]][Z|±HH[:MM]]`; no zone means UTC.
fn parse_iso8601(input: &str) -> Option<SystemTime> {
    let mut cursor = Cursor::new(input);
    let year = cursor.digits(4)?;
    let month = cursor.separated_digits('-', 2)?;
    let day = cursor.separated_digits('-', 2)?;
    let mut civil = Civil {
        year: i64::from(year),
        month,
        day,
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
        offset_seconds: 0,
    };
    if cursor.is_empty() {
        return civil.to_system_time();
    }
    if !(cursor.eat('T') || cursor.eat('t') || cursor.eat(' ')) {
        return None;
    }
    civil.hour = cursor.digits(2)?;
    civil.minute = cursor.separated_digits(':', 2)?;
    if cursor.eat(':') {
        civil.second = cursor.digits(2)?;
        if cursor.eat('.') || cursor.eat(',') {
            let (fraction, width) = cursor.digits_between(1, 9)?;
            civil.nanos = fraction * 10u32.pow(9 - width as u32);
            // Digits past nanosecond precision carry no meaning here.
            while cursor.peek().is_some_and(|c| c.is_ascii_digit()) {
                cursor.bump();
            }
        }
    }
    civil.offset_seconds = match cursor.peek() {
        None => 0,
        Some('Z' | 'z') => {
            cursor.bump();
            0
        }
        Some(sign @ ('+' | '-')) => {
            cursor.bump();
            let hours = cursor.digits(2)?;
            cursor.eat(':');
            let minutes = if cursor.is_empty() {
                0
            } else {
                cursor.digits(2)?
            };
            signed_offset(sign, hours, minutes)?
        }
        Some(_) => return None,
    };
    if !cursor.is_empty() {
        return None;
    }
    civil.to_system_time()
}

/// `[Day,] DD Mon YYYY HH:MM[:SS] (±hhmm|GMT|UT|UTC|Z|EST|...)`.
fn parse_rfc822(input: &str) -> Option<SystemTime> {
    let mut cursor = Cursor::new(input);
    let first = cursor.word();
    if !first.is_empty() {
        // A weekday name; its value is redundant with the date, so it is not checked.
        if !cursor.eat(',') {
            return None;
        }
        cursor.skip_spaces();
    }
    let (day, _) = cursor.digits_between(1, 2)?;
    if !cursor.skip_spaces() {
        return None;
    }
    let month = month_number(cursor.word())?;
    if !cursor.skip_spaces() {
        return None;
    }
    let year = match cursor.digits_between(2, 4)? {
        (year, 4) => i64::from(year),
        // RFC 822 two-digit years, read the way Python's email.utils does.
        (year, 2) if year >= 70 => 1900 + i64::from(year),
        (year, 2) => 2000 + i64::from(year),
        _ => return None,
    };
    if !cursor.skip_spaces() {
        return None;
    }
    let hour = cursor.digits(2)?;
    let minute = cursor.separated_digits(':', 2)?;
    let second = if cursor.eat(':') {
        cursor.digits(2)?
    } else {
        0
    };
    cursor.skip_spaces();
    let offset_seconds = match cursor.peek() {
        None => 0,
        Some(sign @ ('+' | '-')) => {
            cursor.bump();
            let hours = cursor.digits(2)?;
            let minutes = cursor.digits(2)?;
            signed_offset(sign, hours, minutes)?
        }
        Some(_) => named_zone_offset(cursor.word())?,
    };
    cursor.skip_spaces();
    if !cursor.is_empty() {
        return None;
    }
    Civil {
        year,
        month,
        day,
        hour,
        minute,
        second,
        nanos: 0,
        offset_seconds,
    }
    .to_system_time()
}

fn signed_offset(sign: char, hours: u32, minutes: u32) -> Option<i64> {
    if hours > 23 || minutes > 59 {
        return None;
    }
    let seconds = i64::from(hours * 3_600 + minutes * 60);
    Some(if sign == '-' { -seconds } else { seconds })
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let prefix = name.get(..3)?;
    MONTHS
        .iter()
        .position(|month| month.eq_ignore_ascii_case(prefix))
        .map(|index| index as u32 + 1)
}

fn named_zone_offset(zone: &str) -> Option<i64> {
    let hours: i64 = match zone.to_ascii_uppercase().as_str() {
        "GMT" | "UT" | "UTC" | "Z" => 0,
        "EDT" => -4,
        "EST" | "CDT" => -5,
        "CST" | "MDT" => -6,
        "MST" | "PDT" => -7,
        "PST" => -8,
        _ => return None,
    };
    Some(hours * 3_600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn parses_the_live_server_rfc822_form() {
        let time = HordeTime::parse("Sat, 01 Jan 2011 00:00:00 -0000").unwrap();
        assert_eq!(time.system_time(), at(1_293_840_000));
        let time = HordeTime::parse("Fri, 01 Jan 2021 00:00:00 -0000").unwrap();
        assert_eq!(time.system_time(), at(1_609_459_200));
    }

    #[test]
    fn parses_rfc822_variants() {
        let base = at(1_609_459_200); // 2021-01-01T00:00:00Z
        for input in [
            "01 Jan 2021 00:00:00 GMT",
            "Fri, 1 Jan 2021 00:00:00 +0000",
            "Fri, 01 Jan 21 00:00 UT",
            "Thu, 31 Dec 2020 19:00:00 EST",
            "Fri, 01 Jan 2021 01:00:00 +0100",
            "fri, 01 jan 2021 00:00:00 z",
        ] {
            assert_eq!(
                HordeTime::parse(input).unwrap().system_time(),
                base,
                "{input}"
            );
        }
    }

    #[test]
    fn parses_iso8601_variants() {
        let base = at(1_609_459_200);
        for input in [
            "2021-01-01T00:00:00Z",
            "2021-01-01T00:00:00",
            "2021-01-01 00:00:00+00:00",
            "2021-01-01T01:30:00+01:30",
            "2020-12-31T23:00:00-0100",
            "2021-01-01",
            "2021-01-01T00:00Z",
        ] {
            assert_eq!(
                HordeTime::parse(input).unwrap().system_time(),
                base,
                "{input}"
            );
        }
        let fractional = HordeTime::parse("2021-01-01T00:00:00.123456789123Z").unwrap();
        assert_eq!(
            fractional.system_time(),
            base + Duration::from_nanos(123_456_789)
        );
        let micros = HordeTime::parse("2021-01-01T00:00:00.5Z").unwrap();
        assert_eq!(micros.system_time(), base + Duration::from_millis(500));
    }

    #[test]
    fn handles_leap_years_and_pre_epoch_dates() {
        assert_eq!(
            HordeTime::parse("2024-02-29T00:00:00Z")
                .unwrap()
                .system_time(),
            at(1_709_164_800)
        );
        assert_eq!(
            HordeTime::parse("1969-12-31T23:59:59Z")
                .unwrap()
                .system_time(),
            UNIX_EPOCH - Duration::from_secs(1)
        );
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            "",
            "yesterday",
            "2021-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2021-01-01T24:00:00Z",
            "2021-01-01T00:00:00Q",
            "Fri, 01 Foo 2021 00:00:00 GMT",
            "Fri 01 Jan 2021 00:00:00 GMT",
            "Fri, 01 Jan 2021 00:00:00 +0000 trailing",
        ] {
            assert!(
                HordeTime::parse(input).is_err(),
                "{input:?} should not parse"
            );
        }
    }

    #[test]
    fn serde_round_trip_through_rfc3339() {
        let time: HordeTime = serde_json::from_str("\"Sat, 01 Jan 2011 00:00:00 -0000\"").unwrap();
        let json = serde_json::to_string(&time).unwrap();
        assert_eq!(json, "\"2011-01-01T00:00:00Z\"");
        let back: HordeTime = serde_json::from_str(&json).unwrap();
        assert_eq!(back, time);
        assert!(serde_json::from_str::<HordeTime>("\"soon\"").is_err());
    }
}
