//! Datetimes as the Horde sends them.
//!
//! The live server formats datetimes as RFC 822 (`Sat, 01 Jan 2011 00:00:00 -0000`,
//! flask-restx `dt_format="rfc822"`), while the SDK fixtures show ISO 8601
//! (`2021-01-01T00:00:00Z`). [`HordeTime`] accepts both, and the three forms of
//! HTTP dates (RFC 9110 §5.6.7), which `Retry-After` may carry. The parsing is
//! `jiff`'s (its RFC 2822 parser also reads IMF-fixdate; `strtime` reads the two
//! obsolete HTTP forms); this module only picks the form and converts to a UTC
//! `SystemTime` without unchecked arithmetic. It never formats for the wire.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use jiff::civil::DateTime;
use jiff::fmt::rfc2822::DateTimeParser;
use jiff::fmt::strtime;
use jiff::tz::Offset;
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant read from a Horde response. Serializes as RFC 3339 (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HordeTime(SystemTime);

/// How much of unparseable input an error keeps (a hostile server can send megabytes).
const ERROR_INPUT_CHARS: usize = 64;

/// A datetime string in neither RFC 822 nor ISO 8601 form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 822 or ISO 8601 datetime: {input:?}")]
pub struct TimeParseError {
    input: String,
}

/// RFC 850 dates, obsolete but still to be accepted in HTTP (RFC 9110 §5.6.7).
const RFC850_FORMAT: &str = "%A, %d-%b-%y %H:%M:%S GMT";
/// C `asctime()` dates, the other obsolete HTTP form.
const ASCTIME_FORMAT: &str = "%a %b %e %H:%M:%S %Y";

impl HordeTime {
    /// Parses RFC 822 / RFC 2822 / HTTP dates or ISO 8601 / RFC 3339. A datetime
    /// without an offset is UTC; a date alone is its midnight UTC.
    pub fn parse(input: &str) -> Result<Self, TimeParseError> {
        let trimmed = input.trim();
        parse_iso8601(trimmed)
            .or_else(|| parse_rfc2822(trimmed))
            .or_else(|| parse_obsolete_http_date(trimmed))
            .and_then(to_system_time)
            .map(HordeTime)
            .ok_or_else(|| TimeParseError {
                input: input.chars().take(ERROR_INPUT_CHARS).collect(),
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
    /// RFC 3339 in UTC, whole seconds. jiff prints any year it can hold, before
    /// 1970 too (humantime, used before, panicked there); a `SystemTime` beyond
    /// jiff's range (years ±9999) prints as its `Debug` form instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Timestamp::try_from(self.0)
            .and_then(|timestamp| Timestamp::from_second(timestamp.as_second()))
        {
            Ok(seconds) => seconds.fmt(f),
            Err(_) => write!(f, "{:?}", self.0),
        }
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

fn parse_iso8601(input: &str) -> Option<Timestamp> {
    if let Ok(timestamp) = input.parse::<Timestamp>() {
        return Some(timestamp);
    }
    // No offset (or a date alone): the Horde's naive datetimes are UTC.
    let civil = input.parse::<DateTime>().ok()?;
    Offset::UTC.to_timestamp(civil).ok()
}

fn parse_rfc2822(input: &str) -> Option<Timestamp> {
    static PARSER: DateTimeParser = DateTimeParser::new();
    PARSER.parse_timestamp(input).ok()
}

fn parse_obsolete_http_date(input: &str) -> Option<Timestamp> {
    [RFC850_FORMAT, ASCTIME_FORMAT].iter().find_map(|format| {
        let civil = strtime::parse(format, input).ok()?.to_datetime().ok()?;
        Offset::UTC.to_timestamp(civil).ok()
    })
}

/// `Timestamp` → `SystemTime` (checked; fails outside the platform's range).
fn to_system_time(timestamp: Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(timestamp).ok()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

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
        let fractional = HordeTime::parse("2021-01-01T00:00:00.123456789Z").unwrap();
        assert_eq!(
            fractional.system_time(),
            base + Duration::from_nanos(123_456_789)
        );
        // Python's isoformat() writes microseconds.
        let python = HordeTime::parse("2021-01-01T00:00:00.123456").unwrap();
        assert_eq!(python.system_time(), base + Duration::from_micros(123_456));
        // jiff stops at nanoseconds; nothing the Horde sends has more digits.
        assert!(HordeTime::parse("2021-01-01T00:00:00.123456789123Z").is_err());
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
    fn parses_the_three_http_date_forms() {
        let base = at(784_111_777); // RFC 9110's example, 1994-11-06T08:49:37Z
        for input in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                HordeTime::parse(input).unwrap().system_time(),
                base,
                "{input}"
            );
        }
        let future = HordeTime::parse("Fri, 01 Jan 2100 00:00:00 GMT").unwrap();
        assert_eq!(future.system_time(), at(4_102_444_800));
        // A weekday that contradicts the date is not trusted.
        assert!(HordeTime::parse("Mon, 01 Jan 2100 00:00:00 GMT").is_err());
    }

    #[test]
    fn extreme_dates_neither_panic_nor_wrap() {
        let early = HordeTime::parse("0001-01-01T00:00:00Z").unwrap();
        assert!(early.system_time() < UNIX_EPOCH);
        assert_eq!(early.to_string(), "0001-01-01T00:00:00Z");
        let late = HordeTime::parse("9999-12-30T00:00:00Z").unwrap();
        assert_eq!(late.to_string(), "9999-12-30T00:00:00Z");
        // jiff's timestamps end a day early so that every offset fits.
        assert!(HordeTime::parse("9999-12-31T23:59:59Z").is_err());
        assert_eq!(
            HordeTime::from(UNIX_EPOCH - Duration::from_millis(1500)).to_string(),
            "1969-12-31T23:59:59Z"
        );
        // Past jiff's range: printed, not panicking.
        let far = HordeTime::from(UNIX_EPOCH + Duration::from_secs(1 << 40));
        assert!(!far.to_string().is_empty());
        assert!(HordeTime::parse("+010000-01-01T00:00:00Z").is_err());
        let huge = "9".repeat(100_000);
        let err = HordeTime::parse(&huge).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
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
