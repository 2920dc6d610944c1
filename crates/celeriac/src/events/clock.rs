//! The Lamport clock a process stamps on its events and remote-control messages (kombu's
//! `LamportClock`): one counter per app, moved forward on every send and past any clock
//! heard from another node.

use std::sync::atomic::{AtomicU64, Ordering};

/// A Lamport clock: monotonic per process, and past every clock it has seen.
#[derive(Debug, Default)]
pub struct Clock {
    value: AtomicU64,
}

impl Clock {
    /// The clock now.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Moves forward for something sent; returns the new value (the first is 1).
    pub fn forward(&self) -> u64 {
        self.value.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Moves past `other`, a clock heard from another node: `max(self, other) + 1`.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut now = self.value.load(Ordering::Relaxed);
        loop {
            let next = now.max(other) + 1;
            match self
                .value
                .compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => now = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_and_jumps_past_what_it_hears() {
        let c = Clock::default();
        assert_eq!(c.forward(), 1);
        assert_eq!(c.forward(), 2);
        assert_eq!(c.adjust(10), 11);
        assert_eq!(c.adjust(3), 12);
        assert_eq!(c.value(), 12);
    }
}
