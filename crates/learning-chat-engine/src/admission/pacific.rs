//! The provider's day: Gemini's per-day quotas reset at midnight Pacific time
//! (America/Los_Angeles), so a per-day budget counts from there. The US daylight-saving rule
//! (since 2007: from the second Sunday of March, 02:00 PST, to the first Sunday of November,
//! 02:00 PDT) is small enough to compute here instead of shipping a time-zone database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// One Pacific day: its date and when the next one begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacificDay {
    /// `YYYY-MM-DD`, the Pacific date.
    pub date: String,
    /// Time from the instant asked about to the next midnight Pacific.
    pub until_next: Duration,
}

/// The Pacific day of the current wall-clock time.
pub fn today() -> PacificDay {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    day_at(now)
}

/// The Pacific day of `unix_ms` (milliseconds since the Unix epoch, UTC).
pub fn day_at(unix_ms: i64) -> PacificDay {
    let local = unix_ms + offset_ms(unix_ms);
    let day = local.div_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(day);
    // Midnight is never inside a transition (they happen at 02:00), so the offset at the next
    // midnight is the one in force one standard-time offset after it.
    let next_local = (day + 1) * DAY_MS;
    let guess = next_local + 8 * HOUR_MS;
    let next_utc = next_local - offset_ms(guess);
    PacificDay {
        date: format!("{y:04}-{m:02}-{d:02}"),
        until_next: Duration::from_millis(u64::try_from(next_utc - unix_ms).unwrap_or(0)),
    }
}

/// Pacific time's offset from UTC at `unix_ms`: -7 h during daylight-saving time, else -8 h.
fn offset_ms(unix_ms: i64) -> i64 {
    let (year, _, _) = civil_from_days(unix_ms.div_euclid(DAY_MS));
    // 02:00 PST is 10:00 UTC; 02:00 PDT is 09:00 UTC.
    let starts = nth_sunday(year, 3, 2) * DAY_MS + 10 * HOUR_MS;
    let ends = nth_sunday(year, 11, 1) * DAY_MS + 9 * HOUR_MS;
    if (starts..ends).contains(&unix_ms) {
        -7 * HOUR_MS
    } else {
        -8 * HOUR_MS
    }
}

/// Days since the epoch of the `n`th Sunday of `month` in `year`.
fn nth_sunday(year: i64, month: u32, n: i64) -> i64 {
    let first = days_from_civil(year, month, 1);
    // 1970-01-01 was a Thursday: weekday 4 with Sunday as 0.
    let weekday = (first + 4).rem_euclid(7);
    first + (7 - weekday) % 7 + 7 * (n - 1)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn utc(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * DAY_MS + h * HOUR_MS + mi * 60_000
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(
            civil_from_days(days_from_civil(2000, 12, 31)),
            (2000, 12, 31)
        );
    }

    #[test]
    fn the_daylight_saving_sundays_are_the_us_ones() {
        assert_eq!(nth_sunday(2025, 3, 2), days_from_civil(2025, 3, 9));
        assert_eq!(nth_sunday(2025, 11, 1), days_from_civil(2025, 11, 2));
        assert_eq!(nth_sunday(2026, 3, 2), days_from_civil(2026, 3, 8));
        assert_eq!(nth_sunday(2026, 11, 1), days_from_civil(2026, 11, 1));
    }

    #[test]
    fn the_day_starts_at_midnight_pacific_in_winter_and_summer() {
        // Winter (PST, UTC-8): 07:59 UTC is still the day before; 08:00 UTC starts the day.
        let before = day_at(utc(2026, 1, 15, 7, 59));
        assert_eq!(before.date, "2026-01-14");
        assert_eq!(before.until_next, Duration::from_secs(60));
        assert_eq!(day_at(utc(2026, 1, 15, 8, 0)).date, "2026-01-15");
        // Summer (PDT, UTC-7): the day starts at 07:00 UTC.
        assert_eq!(day_at(utc(2026, 7, 1, 6, 59)).date, "2026-06-30");
        let summer = day_at(utc(2026, 7, 1, 7, 0));
        assert_eq!(summer.date, "2026-07-01");
        assert_eq!(summer.until_next, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn transition_days_last_23_and_25_hours() {
        // 2026-03-08 begins 08:00 UTC (PST) and ends 07:00 UTC the next day (PDT): 23 h.
        let spring = day_at(utc(2026, 3, 8, 8, 0));
        assert_eq!(spring.date, "2026-03-08");
        assert_eq!(spring.until_next, Duration::from_secs(23 * 3600));
        // 2026-11-01 begins 07:00 UTC (PDT) and ends 08:00 UTC the next day (PST): 25 h.
        let autumn = day_at(utc(2026, 11, 1, 7, 0));
        assert_eq!(autumn.date, "2026-11-01");
        assert_eq!(autumn.until_next, Duration::from_secs(25 * 3600));
        // New year's eve in Los Angeles while it is already 1 January in UTC.
        assert_eq!(day_at(utc(2027, 1, 1, 3, 0)).date, "2026-12-31");
    }
}
