//! Civil (calendar) time in UTC from Unix seconds.
//!
//! The builder stamps FAT directory entries and OCI image configs with the build's
//! epoch, and `kiln-enroll` prints expiry and heartbeat times. All of them need the
//! proleptic Gregorian date of a second count, computed from the number alone: no
//! clock, time zone or locale may leak into a reproducible image. The conversion is
//! Howard Hinnant's days-to-civil algorithm, exact for every `i64` second count.

/// Seconds in a civil day (UTC has no leap seconds in Unix time).
const SECS_PER_DAY: i64 = 86_400;

/// A UTC date and time of day, to the second, in the proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    /// The year; 0 is 1 BC and negative years count further back.
    pub year: i64,
    /// The month, 1 to 12.
    pub month: u32,
    /// The day of the month, 1 to 31.
    pub day: u32,
    /// The hour, 0 to 23.
    pub hour: u32,
    /// The minute, 0 to 59.
    pub minute: u32,
    /// The second, 0 to 59.
    pub second: u32,
}

impl DateTime {
    /// The UTC time of a Unix timestamp; negative ones lie before 1970.
    pub fn from_unix(secs: i64) -> DateTime {
        DateTime::from_day_and_second(secs.div_euclid(SECS_PER_DAY), secs.rem_euclid(SECS_PER_DAY))
    }

    /// The UTC time of an unsigned Unix timestamp. Every `u64` is accepted: the
    /// day count of even `u64::MAX` fits an `i64`, where the seconds would not.
    pub fn from_unix_u64(secs: u64) -> DateTime {
        // Both casts are lossless: u64::MAX / 86_400 is far below i64::MAX.
        let per_day = SECS_PER_DAY as u64;
        DateTime::from_day_and_second((secs / per_day) as i64, (secs % per_day) as i64)
    }

    /// `days` since 1970-01-01 plus `sod` (0..86_400) seconds into that day.
    fn from_day_and_second(days: i64, sod: i64) -> DateTime {
        let (year, month, day) = civil_from_days(days);
        // sod is within one day, so every part fits a u32.
        DateTime {
            year,
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: (sod / 60 % 60) as u32,
            second: (sod % 60) as u32,
        }
    }

    /// RFC 3339 in UTC, `YYYY-MM-DDTHH:MM:SSZ` (what OCI image configs carry).
    pub fn rfc3339(&self) -> String {
        format!("{}T{}Z", self.date_string(), self.time_string())
    }

    /// The date as `YYYY-MM-DD`.
    pub fn date_string(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// The time of day as `HH:MM:SS`.
    pub fn time_string(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Counting in 400-year eras of 146,097 days from 0000-03-01 puts the leap day at
/// the end of each year, which is what makes the month arithmetic closed-form.
/// `days` must stay within ±(i64::MAX - 719,468); day counts from `i64` seconds do.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // day is 1..=31 and month 1..=12, so the casts are lossless.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
        let t = DateTime::from_unix(secs);
        (t.year, t.month, t.day, t.hour, t.minute, t.second)
    }

    #[test]
    fn known_dates() {
        assert_eq!(dt(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(dt(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(dt(951_868_799), (2000, 2, 29, 23, 59, 59));
        assert_eq!(dt(951_868_800), (2000, 3, 1, 0, 0, 0));
        assert_eq!(dt(2_147_483_647), (2038, 1, 19, 3, 14, 7));
        assert_eq!(dt(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(dt(4_107_542_399), (2100, 2, 28, 23, 59, 59));
        assert_eq!(dt(4_107_542_400), (2100, 3, 1, 0, 0, 0));
        assert_eq!(dt(315_532_800), (1980, 1, 1, 0, 0, 0));
    }

    #[test]
    fn before_the_epoch() {
        assert_eq!(dt(-1), (1969, 12, 31, 23, 59, 59));
        assert_eq!(dt(-86_400), (1969, 12, 31, 0, 0, 0));
        assert_eq!(dt(-86_401), (1969, 12, 30, 23, 59, 59));
        // 1900 is not a leap year, 1600 is.
        assert_eq!(dt(-2_203_891_200), (1900, 3, 1, 0, 0, 0));
        assert_eq!(civil_from_days(-135_081), (1600, 2, 29));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
        assert_eq!(civil_from_days(-719_469), (0, 2, 29));
    }

    #[test]
    fn day_counts_walk_the_calendar() {
        // Consecutive days must step through every date exactly once, with the
        // Gregorian leap rule, across several 400-year eras either side of 1970.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_len = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut prev = civil_from_days(-400_000);
        for days in -399_999..400_000 {
            let (y, m, d) = civil_from_days(days);
            let (py, pm, pd) = prev;
            let want = if pd < month_len(py, pm) {
                (py, pm, pd + 1)
            } else if pm < 12 {
                (py, pm + 1, 1)
            } else {
                (py + 1, 1, 1)
            };
            assert_eq!((y, m, d), want, "day {days}");
            prev = (y, m, d);
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        for secs in [i64::MIN, i64::MAX] {
            let t = DateTime::from_unix(secs);
            assert!((1..=12).contains(&t.month) && (1..=31).contains(&t.day));
        }
        let t = DateTime::from_unix_u64(u64::MAX);
        assert!((1..=12).contains(&t.month));
        assert_eq!(
            DateTime::from_unix_u64(951_782_400),
            DateTime::from_unix(951_782_400)
        );
    }

    #[test]
    fn formats() {
        assert_eq!(DateTime::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(DateTime::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
        assert_eq!(
            DateTime::from_unix(2_147_483_647).rfc3339(),
            "2038-01-19T03:14:07Z"
        );
        let t = DateTime::from_unix(951_782_400 + 3_723);
        assert_eq!(t.date_string(), "2000-02-29");
        assert_eq!(t.time_string(), "01:02:03");
    }
}
