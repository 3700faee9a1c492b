//! Event and pipeline times: microseconds since the Unix epoch, UTC, as Avro's
//! `timestamp-micros` stores them.

use serde::{Deserialize, Serialize};
use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant with microsecond precision.
///
/// Kept as the raw micros so that encoding is a plain `long` and ordering is integer ordering;
/// conversion to and from RFC 3339 happens only at the edges (JSON, logs, ClickHouse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

/// An RFC 3339 text that could not be read as a timestamp.
#[derive(Debug, thiserror::Error)]
#[error("not an RFC 3339 timestamp with offset (e.g. 2018-08-03T12:53:00.163+01:00): {0}")]
pub struct TimestampParseError(String);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub const fn as_micros(self) -> i64 {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000)
    }

    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// Sub-microsecond digits (the seed's logs carry 7-digit fractions) are truncated.
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let nanos = dt.unix_timestamp_nanos();
        Self(nanos.div_euclid(1_000) as i64)
    }

    pub fn to_datetime(self) -> OffsetDateTime {
        // i64 micros always fit the i128 nanos range `time` accepts for years 1..9999; outside it
        // clamp rather than panic, since the value may come from an untrusted record.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000).unwrap_or(
            if self.0 < 0 {
                OffsetDateTime::UNIX_EPOCH
            } else {
                time::macros::datetime!(9999-12-31 23:59:59.999999 UTC)
            },
        )
    }

    /// [`Self::parse_rfc3339`], also returning the UTC offset the text was written with, in
    /// minutes (`+01:00` -> 60, `Z` -> 0).
    pub fn parse_rfc3339_with_offset(text: &str) -> Result<(Self, i32), TimestampParseError> {
        OffsetDateTime::parse(text.trim(), &Rfc3339)
            .map(|dt| {
                let (h, m, _) = dt.offset().as_hms();
                (Self::from_datetime(dt), i32::from(h) * 60 + i32::from(m))
            })
            .map_err(|e| TimestampParseError(e.to_string()))
    }

    /// Parses RFC 3339 with any offset (`Z`, `+02:00`, `-07:00`) and 1 to 9 fraction digits.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimestampParseError> {
        OffsetDateTime::parse(text.trim(), &Rfc3339)
            .map(Self::from_datetime)
            .map_err(|e| TimestampParseError(format!("{text:?}: {e}")))
    }

    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .format(&Rfc3339)
            .unwrap_or_else(|_| self.0.to_string())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_offset_as_written() {
        let off = |t: &str| Timestamp::parse_rfc3339_with_offset(t).unwrap().1;
        assert_eq!(off("2018-08-03T12:53:00.163+01:00"), 60);
        assert_eq!(off("2020-06-05T06:30:00.193-07:00"), -420);
        assert_eq!(off("2018-11-05T10:20:29.411Z"), 0);
        assert_eq!(off("2024-01-01T00:00:00+05:45"), 345);
        assert_eq!(off("2024-01-01T00:00:00-03:30"), -210);
        let (a, _) = Timestamp::parse_rfc3339_with_offset("2018-08-03T12:53:00+01:00").unwrap();
        assert_eq!(a, Timestamp::parse_rfc3339("2018-08-03T11:53:00Z").unwrap());
    }

    #[test]
    fn parses_the_seed_variants() {
        let z = Timestamp::parse_rfc3339("2018-11-05T10:20:29.411Z").unwrap();
        assert_eq!(z.as_micros(), 1_541_413_229_411_000);
        // 7-digit fraction: the 100 ns digit is truncated.
        let seven = Timestamp::parse_rfc3339("2024-03-08T10:25:03.9504991Z").unwrap();
        assert_eq!(seven.as_micros() % 1_000_000, 950_499);
        let minus7 = Timestamp::parse_rfc3339("2020-06-05T06:30:00.193-07:00").unwrap();
        let utc = Timestamp::parse_rfc3339("2020-06-05T13:30:00.193Z").unwrap();
        assert_eq!(minus7, utc);
        let two_digits = Timestamp::parse_rfc3339("2018-11-05T08:14:20.27-05:00").unwrap();
        assert_eq!(two_digits.as_micros() % 1_000_000, 270_000);
        assert!(Timestamp::parse_rfc3339("2018-11-05 08:14:20").is_err());
    }

    #[test]
    fn formats_back() {
        let t = Timestamp::parse_rfc3339("2024-04-03T16:57:55.1656576+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-04-03T14:57:55.165657Z");
    }
}
