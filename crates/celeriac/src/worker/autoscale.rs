//! Autoscaling (`--autoscale MAX,MIN`): the pool grows while messages wait for a slot and
//! shrinks back, one slot at a time, after a slot stayed unused for the keepalive.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::info;

use super::prefork::PreforkPool;

/// Autoscaling bounds and how long an unused slot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Autoscale {
    pub(super) max: usize,
    pub(super) min: usize,
    pub(super) keepalive: Duration,
}

/// The autoscaler's state: the current pool size and since when a slot went unused.
pub(super) struct Scaler {
    bounds: Autoscale,
    current: usize,
    idle_since: Option<tokio::time::Instant>,
}

impl Scaler {
    /// Starts at the lower bound.
    pub(super) fn new(bounds: Autoscale) -> Self {
        Self {
            bounds,
            current: bounds.min,
            idle_since: None,
        }
    }

    /// New bounds (the `autoscale` command): the pool is brought within them at once.
    pub(super) fn set_bounds(
        &mut self,
        slots: &Arc<Semaphore>,
        max: usize,
        min: usize,
        prefork: Option<&Arc<PreforkPool>>,
    ) -> usize {
        self.bounds.max = max;
        self.bounds.min = min;
        let target = self.current.clamp(min, max);
        if target > self.current {
            slots.add_permits(target - self.current);
        } else if target < self.current {
            forget_slots(slots, self.current - target);
        }
        info!(
            "autoscale: bounds now max={max} min={min}; {} → {target} slots",
            self.current
        );
        self.current = target;
        if let Some(pool) = prefork {
            pool.set_capacity(max);
        }
        self.current
    }

    /// One step: grow while messages wait for a slot (`waiting` of them), shrink by one
    /// after a slot went unused for the keepalive. Returns the pool size.
    pub(super) fn step(
        &mut self,
        slots: &Arc<Semaphore>,
        waiting: usize,
        prefork: Option<&PreforkPool>,
    ) -> usize {
        let free = slots.available_permits();
        if waiting > 0 && self.current < self.bounds.max {
            let grow = waiting.min(self.bounds.max - self.current);
            slots.add_permits(grow);
            self.current += grow;
            self.idle_since = None;
            info!(
                "autoscale: {} → {} slots",
                self.current - grow,
                self.current
            );
        } else if waiting == 0 && free > 0 && self.current > self.bounds.min {
            let since = *self
                .idle_since
                .get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= self.bounds.keepalive {
                if let Ok(slot) = slots.clone().try_acquire_owned() {
                    slot.forget();
                    self.current -= 1;
                    self.idle_since = None;
                    info!("autoscale: {} → {} slots", self.current + 1, self.current);
                    if let Some(pool) = prefork {
                        pool.shrink_to(self.current);
                    }
                }
            }
        } else {
            self.idle_since = None;
        }
        self.current
    }
}

/// Takes `n` slots out of the pool for good: at once where they are free, else as the
/// tasks holding them finish (`pool_shrink`, lowering the autoscale bounds).
pub(super) fn forget_slots(slots: &Arc<Semaphore>, n: usize) {
    let Ok(n) = u32::try_from(n) else { return };
    if n == 0 {
        return;
    }
    if let Ok(p) = slots.clone().try_acquire_many_owned(n) {
        p.forget();
        return;
    }
    let slots = slots.clone();
    tokio::spawn(async move {
        if let Ok(p) = slots.acquire_many_owned(n).await {
            p.forget();
        }
    });
}
