//! Durations in the settings: a number is whole milliseconds (as every `_ms` key has always been
//! read), a string is a humantime duration such as `"30s"`, `"1m 30s"` or `"250ms"`. Printed back
//! (`check-config`, the example file) as milliseconds, so the keys keep their `_ms` meaning.

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Serializer;
use std::fmt;
use std::time::Duration;

/// Serializes a duration as whole milliseconds.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Reads whole milliseconds or a humantime string.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(Millis)
}

struct Millis;

impl Visitor<'_> for Millis {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number of milliseconds or a duration such as \"30s\"")
    }

    fn visit_u64<E: de::Error>(self, millis: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(millis))
    }

    fn visit_i64<E: de::Error>(self, millis: i64) -> Result<Duration, E> {
        u64::try_from(millis)
            .map(Duration::from_millis)
            .map_err(|_| E::invalid_value(Unexpected::Signed(millis), &self))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        let duration = humantime::parse_duration(text.trim())
            .map_err(|e| E::custom(format!("invalid duration \"{text}\": {e}")))?;
        // Printed back in milliseconds: a finer value would not survive check-config's output.
        if duration.subsec_nanos() % 1_000_000 != 0 {
            return Err(E::custom(format!(
                "invalid duration \"{text}\": not a whole number of milliseconds"
            )));
        }
        Ok(duration)
    }
}
