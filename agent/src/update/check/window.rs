//! The maintenance window of node config `[update] window`: when a found update may be
//! applied and the node rebooted. `"Sat 02:00-04:00"` (once a week) or
//! `"daily 03:00-05:00"`, in UTC (a node has no time zone); a window may run past
//! midnight (`"daily 23:30-01:30"`).

use std::fmt;

const DAY: u64 = 86_400;
const WEEK: u64 = 7 * DAY;
/// The weekdays as the config writes them, Monday first.
pub const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
/// The shortest window: `kiln-update-check.timer` fires hourly (plus up to 30 minutes
/// of jitter), so a shorter window could pass without a check inside it.
pub const MIN_MINUTES: u32 = 60;

/// A checked maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The weekday it opens on (0 = Monday), or None for every day.
    pub day: Option<u8>,
    /// Minutes after midnight UTC it opens.
    pub start: u32,
    /// How many minutes it stays open.
    pub minutes: u32,
}

fn parse_time(text: &str, end: bool) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time HH:MM (00:00 to 23:59)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if end && h == 24 && m == 0 {
        return Ok(24 * 60);
    }
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

impl Window {
    /// Parses `"DAY HH:MM-HH:MM"` (DAY: Mon..Sun, any case, or `daily`); the error says
    /// what is wrong and shows the form.
    pub fn parse(text: &str) -> Result<Window, String> {
        let form = "write \"Sat 02:00-04:00\" or \"daily 03:00-05:00\" (UTC)";
        let mut words = text.split_whitespace();
        let (Some(day), Some(range), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("not a day and a time range: {form}"));
        };
        let day = if day.eq_ignore_ascii_case("daily") {
            None
        } else {
            let i = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day))
                .ok_or_else(|| {
                    format!(
                        "{day:?} is not a day: use one of {} or daily",
                        DAYS.join(", ")
                    )
                })?;
            Some(i as u8)
        };
        let (from, to) = range
            .split_once('-')
            .ok_or_else(|| format!("{range:?} is not a time range HH:MM-HH:MM: {form}"))?;
        let start = parse_time(from, false)?;
        let end = parse_time(to, true)?;
        let minutes = (end + 24 * 60 - start) % (24 * 60);
        let minutes = if minutes == 0 && end != start {
            24 * 60
        } else {
            minutes
        };
        if minutes < MIN_MINUTES {
            return Err(format!(
                "{range} is {minutes} minutes; a window must be open at least {MIN_MINUTES} \
                 minutes, since the update check runs about once an hour"
            ));
        }
        Ok(Window {
            day,
            start,
            minutes,
        })
    }

    /// The period the window repeats with, in seconds.
    fn period(&self) -> u64 {
        if self.day.is_some() {
            WEEK
        } else {
            DAY
        }
    }

    /// The opening at or before `now` that is latest (in Unix seconds).
    fn last_opening(&self, now: u64) -> u64 {
        // 1970-01-01 was a Thursday: Monday 1969-12-29 00:00 is 3 days before.
        let offset = match self.day {
            Some(d) => u64::from(d) * DAY + u64::from(self.start) * 60,
            None => u64::from(self.start) * 60,
        };
        let shifted = now + 3 * DAY + self.period() - offset;
        now - shifted % self.period()
    }

    /// Whether `now` (Unix seconds) is inside the window.
    pub fn contains(&self, now: u64) -> bool {
        now - self.last_opening(now) < u64::from(self.minutes) * 60
    }

    /// When the window opens next after `now` (or now, when it is open).
    pub fn next_opening(&self, now: u64) -> u64 {
        if self.contains(now) {
            now
        } else {
            self.last_opening(now) + self.period()
        }
    }
}

/// The window as the config writes it (`Sat 02:00-04:00`; the times are UTC).
impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = (self.start + self.minutes) % (24 * 60);
        let end = if end == self.start { 24 * 60 } else { end };
        match self.day {
            Some(d) => write!(f, "{} ", DAYS[usize::from(d)])?,
            None => write!(f, "daily ")?,
        }
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            end / 60,
            end % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2027-01-15 08:00:00 UTC, a Friday.
    const FRI_0800: u64 = 1_800_000_000;

    #[test]
    fn parses_and_prints() {
        let w = Window::parse("Sat 02:00-04:00").unwrap();
        assert_eq!(
            w,
            Window {
                day: Some(5),
                start: 120,
                minutes: 120
            }
        );
        assert_eq!(w.to_string(), "Sat 02:00-04:00");
        let w = Window::parse("  DAILY   23:30-01:30 ").unwrap();
        assert_eq!((w.day, w.start, w.minutes), (None, 23 * 60 + 30, 120));
        assert_eq!(w.to_string(), "daily 23:30-01:30");
        let w = Window::parse("sun 00:00-24:00").unwrap();
        assert_eq!(w.minutes, 24 * 60);
        assert_eq!(w.to_string(), "Sun 00:00-24:00");
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (text, needle) in [
            ("", "not a day and a time range"),
            (
                "Saturday 02:00-04:00",
                "\"Saturday\" is not a day: use one of Mon",
            ),
            ("Sat 02:00", "is not a time range HH:MM-HH:MM"),
            ("Sat 2:00-04:00", "\"2:00\" is not a time HH:MM"),
            ("Sat 02:00-25:00", "\"25:00\" is not a time"),
            ("Sat 02:00-02:30", "at least 60 minutes"),
            ("Sat 02:00-02:00", "0 minutes"),
            ("daily 03:00-05:00 extra", "not a day and a time range"),
        ] {
            let e = Window::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn inside_and_next_opening_with_a_fixed_clock() {
        let sat = Window::parse("Sat 02:00-04:00").unwrap();
        assert!(!sat.contains(FRI_0800));
        // Saturday 02:00 is 18 hours after Friday 08:00.
        assert_eq!(sat.next_opening(FRI_0800), FRI_0800 + 18 * 3600);
        let inside = FRI_0800 + 19 * 3600;
        assert!(sat.contains(inside));
        assert_eq!(sat.next_opening(inside), inside);
        let closed = FRI_0800 + 20 * 3600;
        assert!(!sat.contains(closed), "04:00 is closed again");
        assert_eq!(sat.next_opening(closed), FRI_0800 + 18 * 3600 + WEEK);

        let daily = Window::parse("daily 07:00-09:00").unwrap();
        assert!(daily.contains(FRI_0800));
        let night = Window::parse("daily 23:00-01:00").unwrap();
        assert!(!night.contains(FRI_0800));
        assert_eq!(night.next_opening(FRI_0800), FRI_0800 + 15 * 3600);
        assert!(
            night.contains(FRI_0800 + 16 * 3600 + 1800),
            "00:30 the next day"
        );
        let fri = Window::parse("Fri 07:59-09:00").unwrap();
        assert!(fri.contains(FRI_0800));
        assert!(!fri.contains(FRI_0800 - 61));
    }
}
