//! Millisecond timestamps: what is stored, what is shown, and what list filters accept.

use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// A point in time at millisecond precision, exactly as stored and as shown on the wire,
/// so that a page position compares equal to the row it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(Utc::now().timestamp_millis())
    }

    pub fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn subsec_nanos(self) -> i32 {
        // rem_euclid of 1000 is < 1000, so the product fits in i32.
        (self.0.rem_euclid(1000) * 1_000_000) as i32
    }

    /// From a protobuf-style (seconds, nanos) pair; sub-millisecond digits are dropped.
    pub fn from_parts(seconds: i64, nanos: i32) -> Option<Self> {
        let millis = seconds
            .checked_mul(1000)?
            .checked_add(i64::from(nanos.clamp(0, 999_999_999)) / 1_000_000)?;
        Some(Timestamp(millis))
    }

    /// ISO-8601 UTC with exactly three fractional digits: `2021-06-23T09:09:34.752Z`.
    pub fn to_iso(self) -> String {
        match Utc.timestamp_millis_opt(self.0).single() {
            Some(at) => at.to_rfc3339_opts(SecondsFormat::Millis, true),
            None => "1970-01-01T00:00:00.000Z".to_owned(),
        }
    }

    /// Parses the time formats list filters accept: `2021-04-25`,
    /// `2021-04-25T03:14:15-07:00`, `2021-04-25 03:14:15.123456` (naive means UTC), with or without `Z`.
    pub fn parse_filter(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(at) = DateTime::parse_from_rfc3339(text) {
            return Some(Timestamp(at.timestamp_millis()));
        }
        let naive = text.strip_suffix(['Z', 'z']).unwrap_or(text);
        for format in [
            "%Y-%m-%dT%H:%M:%S%.f",
            "%Y-%m-%d %H:%M:%S%.f",
            "%Y-%m-%dT%H:%M",
            "%Y-%m-%d %H:%M",
        ] {
            if let Ok(at) = NaiveDateTime::parse_from_str(naive, format) {
                return Some(Timestamp(at.and_utc().timestamp_millis()));
            }
        }
        if let Ok(at) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
            return Some(Timestamp(at.timestamp_millis()));
        }
        NaiveDate::parse_from_str(naive, "%Y-%m-%d")
            .ok()
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .map(|at| Timestamp(at.and_utc().timestamp_millis()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_output_has_exactly_three_fraction_digits() {
        let at = Timestamp::from_millis(1_624_439_374_752);
        assert_eq!(at.to_iso(), "2021-06-23T09:09:34.752Z");
        assert_eq!(
            Timestamp::from_millis(1_624_439_374_000).to_iso(),
            "2021-06-23T09:09:34.000Z"
        );
    }

    #[test]
    fn every_documented_filter_format_parses() {
        let midnight = Timestamp::parse_filter("2021-04-25").unwrap();
        assert_eq!(midnight.to_iso(), "2021-04-25T00:00:00.000Z");
        let offset = Timestamp::parse_filter("2021-04-25T03:14:15-07:00").unwrap();
        assert_eq!(offset.to_iso(), "2021-04-25T10:14:15.000Z");
        let naive = Timestamp::parse_filter("2021-04-25 03:14:15.123456").unwrap();
        assert_eq!(naive.to_iso(), "2021-04-25T03:14:15.123Z");
        let zulu = Timestamp::parse_filter("2021-04-25T03:14:15.123Z").unwrap();
        assert_eq!(zulu, naive);
        assert!(Timestamp::parse_filter("2021-04-25T03:14:15").is_some());
        assert!(Timestamp::parse_filter("2021-04-25Z").is_some());
    }

    #[test]
    fn garbage_times_are_rejected() {
        for bad in [
            "",
            "yesterday",
            "2021-13-01",
            "2021-04-25T25:00:00",
            "1619320455",
        ] {
            assert!(Timestamp::parse_filter(bad).is_none(), "{bad} parsed");
        }
    }

    #[test]
    fn protobuf_parts_round_trip() {
        let at = Timestamp::from_millis(1_624_439_374_752);
        assert_eq!(
            Timestamp::from_parts(at.seconds(), at.subsec_nanos()),
            Some(at)
        );
    }
}
