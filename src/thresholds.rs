//! Consecutive-result thresholds shared by the health check and the registrar prober: a state
//! flips only after `rise` passes or `fall` failures in a row, so one lost probe does not move
//! the election.

/// Counts consecutive results and says when the state flips.
#[derive(Debug, Clone)]
pub struct Thresholds {
    rise: u32,
    fall: u32,
    state: Option<bool>,
    streak: u32,
    streak_of: bool,
}

impl Thresholds {
    /// Needs `rise` passes to become healthy and `fall` failures to become failed. The first
    /// state needs its threshold too.
    pub fn new(rise: u32, fall: u32) -> Self {
        Thresholds {
            rise,
            fall,
            state: None,
            streak: 0,
            streak_of: false,
        }
    }

    /// Records one result; returns the new state if it flipped.
    pub fn record(&mut self, passed: bool) -> Option<bool> {
        if self.streak_of == passed {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak_of = passed;
            self.streak = 1;
        }
        let needed = if passed { self.rise } else { self.fall };
        if self.streak >= needed && self.state != Some(passed) {
            self.state = Some(passed);
            return Some(passed);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_flips_only_after_its_threshold() {
        let mut t = Thresholds::new(2, 3);
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(true));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass resets the failure streak");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(false));
    }
}
