//! The last minutes of a node, one sample a second, for the status page's charts.
//!
//! A sample holds running totals (front-end counters, the heartbeat round trips' sum and
//! count) as the metrics have them; the rates and means come from two samples in a row, so
//! a missed tick widens one step instead of distorting it. No clock is read here: the
//! sampler passes the time in.

use crate::admin::pair::HistoryReport;
use crate::telemetry::FrontEndCounts;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// Time between samples.
pub(super) const STEP: Duration = Duration::from_secs(1);
/// Points kept: five minutes at one a second (about 10 KB of JSON with four front ends,
/// well under the peer link's frame limit).
pub(super) const POINTS: usize = 300;

/// What the metrics and the engine said at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Sample {
    /// When, on the monotonic clock (rates; a wall-clock step must not distort them).
    pub at: std::time::Instant,
    /// Wall clock, ms since the Unix epoch (shown, never subtracted).
    pub at_unix_ms: u64,
    /// The store's conflict count, or why it could not be read.
    pub conflicts: Result<usize, String>,
    /// Running totals by front end (requests, messages, connections; by outcome).
    pub counts: BTreeMap<String, FrontEndCounts>,
    /// Running sum (seconds) and count of heartbeat round trips.
    pub round_trips: (f64, u64),
    /// Replication lag in entries now, while the nodes are in contact.
    pub lag: Option<u64>,
}

/// The newest [`POINTS`] + 1 samples (a point needs the sample before it).
#[derive(Debug, Default)]
pub(super) struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds the newest sample, dropping the oldest beyond what the points need.
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() > POINTS {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The points, oldest first.
    pub fn report(&self) -> HistoryReport {
        let names: Vec<&String> = self
            .latest()
            .map(|s| s.counts.keys().collect())
            .unwrap_or_default();
        let mut report = HistoryReport {
            step_ms: u64::try_from(STEP.as_millis()).unwrap_or(u64::MAX),
            end_unix_ms: self.latest().map_or(0, |s| s.at_unix_ms),
            requests_per_s: names.iter().map(|n| ((*n).clone(), Vec::new())).collect(),
            ..HistoryReport::default()
        };
        for (before, now) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            report.rtt_ms.push(mean_round_trip_ms(before, now));
            report.lag.push(now.lag);
            let elapsed = now.at.saturating_duration_since(before.at).as_millis();
            let seconds = u64::try_from(elapsed).ok().filter(|&ms| ms > 0);
            for name in &names {
                // A counter appears with its first increment: none before means zero.
                let then = before.counts.get(*name).map_or(0, |c| c.total);
                let rate = match (now.counts.get(*name).map(|c| c.total), seconds) {
                    (Some(total), Some(ms)) if total >= then => {
                        Some(round((total - then) as f64 * 1000.0 / ms as f64, 10.0))
                    }
                    _ => None,
                };
                if let Some(series) = report.requests_per_s.get_mut(*name) {
                    series.push(rate);
                }
            }
        }
        report
    }
}

/// The mean round trip between two samples, in ms; `None` if no heartbeat came back.
fn mean_round_trip_ms(before: &Sample, now: &Sample) -> Option<f64> {
    let count = now.round_trips.1.checked_sub(before.round_trips.1)?;
    let sum = now.round_trips.0 - before.round_trips.0;
    (count > 0 && sum >= 0.0).then(|| round(sum * 1000.0 / count as f64, 1000.0))
}

/// `value` rounded to `1 / per` (short JSON; the charts show no more).
fn round(value: f64, per: f64) -> f64 {
    (value * per).round() / per
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One base instant for every test sample (any will do: samples are given their times).
    #[allow(clippy::disallowed_methods)]
    fn base() -> std::time::Instant {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(std::time::Instant::now)
    }

    fn sample(second: u64, sip: u64, round_trips: (f64, u64), lag: Option<u64>) -> Sample {
        Sample {
            at: base() + Duration::from_secs(second),
            at_unix_ms: second * 1000,
            conflicts: Ok(0),
            counts: [(
                "sip".to_owned(),
                FrontEndCounts {
                    total: sip,
                    ..FrontEndCounts::default()
                },
            )]
            .into_iter()
            .collect(),
            round_trips,
            lag,
        }
    }

    #[test]
    fn rates_and_means_come_from_two_samples_in_a_row() {
        let mut history = History::default();
        history.push(sample(10, 100, (0.0, 0), Some(0)));
        history.push(sample(11, 150, (0.003, 3), Some(2)));
        // A missed tick: two seconds, one step.
        history.push(sample(13, 250, (0.003, 3), None));
        let report = history.report();
        assert_eq!(report.requests_per_s["sip"], vec![Some(50.0), Some(50.0)]);
        assert_eq!(report.rtt_ms, vec![Some(1.0), None]);
        assert_eq!(report.lag, vec![Some(2), None]);
        assert_eq!((report.step_ms, report.end_unix_ms), (1000, 13_000));
    }

    #[test]
    fn only_the_last_minutes_are_kept() {
        let mut history = History::default();
        for second in 0..1000 {
            history.push(sample(second, second * 2, (0.0, 0), Some(0)));
        }
        let report = history.report();
        assert_eq!(report.requests_per_s["sip"].len(), POINTS);
        assert!(report.requests_per_s["sip"].iter().all(|r| *r == Some(2.0)));
        assert_eq!(report.end_unix_ms, 999_000);
    }

    #[test]
    fn a_counter_that_went_back_or_a_clock_that_stood_still_gives_no_point() {
        let mut history = History::default();
        history.push(sample(5, 100, (0.5, 10), None));
        history.push(sample(6, 40, (0.4, 9), None));
        history.push(sample(6, 60, (0.4, 9), None));
        let report = history.report();
        assert_eq!(report.requests_per_s["sip"], vec![None, None]);
        assert_eq!(report.rtt_ms, vec![None, None]);
    }

    #[test]
    fn a_front_end_counted_for_the_first_time_had_nothing_before() {
        let mut history = History::default();
        let mut first = sample(1, 0, (0.0, 0), None);
        first.counts.clear();
        history.push(first);
        history.push(sample(2, 7, (0.0, 0), None));
        assert_eq!(history.report().requests_per_s["sip"], vec![Some(7.0)]);
    }
}
