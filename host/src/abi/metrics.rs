//! Metrics: counters, gauges and histograms kept in the [`HostEnv`].

use super::memory::{read_str, write, write_u32};
use super::{BAD_ARGUMENT, Ctx, NOT_FOUND, OK};
use crate::env::MetricKind;

pub(super) fn proxy_define_metric(
    mut caller: Ctx<'_>,
    metric_type: u32,
    name_data: u32,
    name_size: u32,
    return_metric_id: u32,
) -> u32 {
    let kind = match metric_type {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        _ => return BAD_ARGUMENT,
    };
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return BAD_ARGUMENT };
    let id = caller.data().env.define_metric(kind, &name);
    if write_u32(&mut caller, return_metric_id, id) { OK } else { BAD_ARGUMENT }
}

pub(super) fn proxy_increment_metric(caller: Ctx<'_>, metric_id: u32, offset: i64) -> u32 {
    match caller.data().env.increment_metric(metric_id, offset) {
        None => NOT_FOUND,
        Some(false) => BAD_ARGUMENT,
        Some(true) => OK,
    }
}

pub(super) fn proxy_record_metric(caller: Ctx<'_>, metric_id: u32, value: u64) -> u32 {
    match caller.data().env.record_metric(metric_id, value) {
        None => NOT_FOUND,
        Some(()) => OK,
    }
}

pub(super) fn proxy_get_metric(mut caller: Ctx<'_>, metric_id: u32, return_value: u32) -> u32 {
    match caller.data().env.get_metric(metric_id) {
        None => NOT_FOUND,
        Some(value) if write(&mut caller, return_value, &value.to_le_bytes()) => OK,
        Some(_) => BAD_ARGUMENT,
    }
}
