//! Clocks and timers.

use std::time::Duration;

use super::Ctx;
use super::memory::{status_of_write, write};
use super::types::Status;
use crate::types::Effect;

pub(super) fn proxy_get_current_time_nanoseconds(mut caller: Ctx<'_>, return_time: u32) -> u32 {
    let now = caller.data().env.clock.unix_nanos();
    status_of_write(write(&mut caller, return_time, &now.to_le_bytes()))
}

/// A period of 0 stops the timer.
pub(super) fn proxy_set_tick_period_milliseconds(mut caller: Ctx<'_>, tick_period: u32) -> u32 {
    let period = (tick_period > 0).then(|| Duration::from_millis(tick_period.into()));
    caller.data_mut().effects.push(Effect::TickPeriod(period));
    Status::Ok.into()
}
