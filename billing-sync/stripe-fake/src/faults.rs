//! Fault injection: a share of requests answered with Stripe's 429 or 500, held past the client's
//! timeout, or applied with the answer lost (the hardest case for a client: it cannot know).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Percentages (0–100) of API requests that meet each fault; set with `POST /_fake/faults`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// 429 `rate_limit`, not applied.
    pub rate_limit_percent: u8,
    /// 500 `api_error`, not applied.
    pub server_error_percent: u8,
    /// Held for `timeout_ms` before being applied and answered (clients time out first).
    pub timeout_percent: u8,
    pub timeout_ms: u64,
    /// Applied, then answered with a 502 and no Stripe body: the answer is lost.
    pub drop_percent: u8,
    /// Seed of the fault dice, so a test run can be repeated.
    pub seed: u64,
    /// Latency added to every API request (a slow network), in milliseconds.
    pub delay_ms: u64,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Normal,
    RateLimited,
    ServerError,
    Delayed(Duration),
    AnswerLost,
}

/// Rolls the dice for each request (xorshift: deterministic from the seed).
#[derive(Debug, Default)]
pub struct Dice {
    pub faults: Faults,
    state: u64,
}

impl Dice {
    pub fn set(&mut self, faults: Faults) {
        self.faults = faults;
        self.state = faults.seed.max(1);
    }

    fn roll(&mut self) -> u8 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % 100) as u8
    }

    pub fn fate(&mut self) -> Fate {
        let f = self.faults;
        if f.rate_limit_percent == 0 && f.server_error_percent == 0 && f.timeout_percent == 0 && f.drop_percent == 0 {
            return Fate::Normal;
        }
        let roll = self.roll();
        let mut bound = f.rate_limit_percent;
        if roll < bound {
            return Fate::RateLimited;
        }
        bound = bound.saturating_add(f.server_error_percent);
        if roll < bound {
            return Fate::ServerError;
        }
        bound = bound.saturating_add(f.timeout_percent);
        if roll < bound {
            return Fate::Delayed(Duration::from_millis(f.timeout_ms.max(1)));
        }
        bound = bound.saturating_add(f.drop_percent);
        if roll < bound {
            return Fate::AnswerLost;
        }
        Fate::Normal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shares_come_out_near_their_percentages_and_repeat_by_seed() {
        let faults = Faults { rate_limit_percent: 20, drop_percent: 10, seed: 7, ..Faults::default() };
        let roll = |faults| {
            let mut dice = Dice::default();
            dice.set(faults);
            (0..10_000).map(|_| dice.fate()).collect::<Vec<_>>()
        };
        let fates = roll(faults);
        let limited = fates.iter().filter(|f| **f == Fate::RateLimited).count();
        let lost = fates.iter().filter(|f| **f == Fate::AnswerLost).count();
        assert!((1_700..2_300).contains(&limited), "{limited}");
        assert!((700..1_300).contains(&lost), "{lost}");
        assert_eq!(fates, roll(faults));
        assert_eq!(Dice::default().fate(), Fate::Normal);
    }
}
