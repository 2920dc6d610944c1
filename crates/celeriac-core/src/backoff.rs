//! [`Backoff`]: the one capped exponential back-off every retry loop in celeriac uses
//! (publishing, consuming, result writes, chord joins, pub/sub reconnects).
//!
//! Each loop used to carry its own `pause = (pause * 2).min(cap)`; one type keeps the
//! doubling, the cap and the reset in one place, and lets a loop ask whether a deadline
//! leaves room for another try.

use std::time::Duration;

/// Doubling pauses from `initial` up to `max`.
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::backoff::Backoff;
///
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(b.next_pause(), Duration::from_millis(100));
/// assert_eq!(b.next_pause(), Duration::from_millis(200));
/// assert_eq!(b.next_pause(), Duration::from_millis(300));
/// assert_eq!(b.next_pause(), Duration::from_millis(300));
/// b.reset();
/// assert_eq!(b.next_pause(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Pauses starting at `initial`, doubling up to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The pause the next [`next_pause`](Self::next_pause) or [`wait`](Self::wait) takes.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// The next pause; the one after it is twice as long, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max).max(self.initial);
        pause
    }

    /// Sleeps for the next pause and returns it.
    pub async fn wait(&mut self) -> Duration {
        let pause = self.next_pause();
        tokio::time::sleep(pause).await;
        pause
    }

    /// Starts again from the initial pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Whether the next pause ends before `deadline` (`None`: no retries at all).
    pub fn fits_before(&self, deadline: Option<tokio::time::Instant>) -> bool {
        deadline.is_some_and(|d| tokio::time::Instant::now() + self.next < d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_caps_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(1000));
        let pauses: Vec<_> = (0..7).map(|_| b.next_pause()).collect();
        assert_eq!(
            pauses,
            [
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000)
            ]
        );
        b.reset();
        assert_eq!(b.peek(), ms(50));
    }

    #[tokio::test(start_paused = true)]
    async fn fits_before_a_deadline() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let now = tokio::time::Instant::now();
        assert!(b.fits_before(Some(now + Duration::from_millis(150))));
        assert!(!b.fits_before(Some(now + Duration::from_millis(100))));
        assert!(!b.fits_before(None));
    }
}
