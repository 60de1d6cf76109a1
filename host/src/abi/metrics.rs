//! Metrics: counters, gauges and histograms kept in the [`HostEnv`](crate::HostEnv).

use super::Ctx;
use super::memory::{read_str, status_of_write, write, write_u32};
use super::types::{MetricType, Status};

pub(super) fn proxy_define_metric(
    mut caller: Ctx<'_>,
    metric_type: u32,
    name_data: u32,
    name_size: u32,
    return_metric_id: u32,
) -> u32 {
    let Ok(metric_type) = MetricType::try_from(metric_type) else { return Status::BadArgument.into() };
    let Some(name) = read_str(&mut caller, name_data, name_size) else { return Status::BadArgument.into() };
    let id = caller.data().env.define_metric(metric_type, &name);
    status_of_write(write_u32(&mut caller, return_metric_id, id))
}

pub(super) fn proxy_increment_metric(caller: Ctx<'_>, metric_id: u32, offset: i64) -> u32 {
    match caller.data().env.increment_metric(metric_id, offset) {
        None => Status::NotFound,
        Some(false) => Status::BadArgument,
        Some(true) => Status::Ok,
    }
    .into()
}

pub(super) fn proxy_record_metric(caller: Ctx<'_>, metric_id: u32, value: u64) -> u32 {
    match caller.data().env.record_metric(metric_id, value) {
        None => Status::NotFound,
        Some(()) => Status::Ok,
    }
    .into()
}

pub(super) fn proxy_get_metric(mut caller: Ctx<'_>, metric_id: u32, return_value: u32) -> u32 {
    match caller.data().env.get_metric(metric_id) {
        None => Status::NotFound.into(),
        Some(value) => status_of_write(write(&mut caller, return_value, &value.to_le_bytes())),
    }
}
