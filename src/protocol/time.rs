//! Timestamps as the reference server writes them: naive ISO-8601 in UTC.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, always held in UTC.
///
/// The reference SDK serializes Python `datetime` values, which print as
/// `2026-11-23T14:16:35.239443` (fraction dropped when it is zero). We write the
/// same shape so that a re-serialization by the reference types is identical,
/// and we accept an explicit offset too, because clients parse by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        // Microsecond precision is all the wire format carries; truncating here
        // keeps a stored value equal to what a client reads back.
        let now = Utc::now();
        let micros = now.timestamp_micros();
        Timestamp(DateTime::from_timestamp_micros(micros).unwrap_or(now))
    }

    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let naive = self.0.naive_utc();
        if naive.nanosecond() / 1_000 == 0 {
            write!(f, "{}", naive.format("%Y-%m-%dT%H:%M:%S"))
        } else {
            write!(f, "{}", naive.format("%Y-%m-%dT%H:%M:%S%.6f"))
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| de::Error::custom(format!("invalid datetime `{text}`")))
    }
}

fn parse(text: &str) -> Option<Timestamp> {
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
        return Some(Timestamp(with_offset.with_timezone(&Utc)));
    }
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|naive| Timestamp(naive.and_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_python_isoformat() {
        let t: Timestamp = serde_json::from_str("\"2026-11-23T14:16:35.239443\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"2026-11-23T14:16:35.239443\"");
        let whole: Timestamp = serde_json::from_str("\"2026-11-23T14:16:35\"").unwrap();
        assert_eq!(whole.to_string(), "2026-11-23T14:16:35");
    }

    #[test]
    fn accepts_an_explicit_offset() {
        let t: Timestamp = serde_json::from_str("\"2026-11-23T15:16:35.5+01:00\"").unwrap();
        assert_eq!(t.to_string(), "2026-11-23T14:16:35.500000");
    }

    #[test]
    fn rejects_garbage() {
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
