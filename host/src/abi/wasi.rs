//! The WASI functions a Rust std filter imports. Filters have no files or arguments; their
//! environment is the plugin's `environment` (Envoy's `vm_config.environment_variables`); what
//! they print becomes log lines.

use wasmtime::{FuncType, Linker, Val, format_err};

use super::logging::log_line;
use super::memory::{read, write, write_u32};
use super::types::{ClockId, Errno, Fd, LogLevel};
use super::{Ctx, WASI};
use crate::vm::VmState;

/// Only stdout and stderr, which become log lines.
pub(super) fn fd_write(mut caller: Ctx<'_>, fd: i32, iovs: u32, iovs_len: u32, return_written: u32) -> i32 {
    let fd = match Fd::try_from(fd) {
        Ok(fd) => fd,
        Err(errno) => return errno.into(),
    };
    let mut text = Vec::new();
    for i in 0..iovs_len {
        let Some(iov) = read(&mut caller, iovs.wrapping_add(i * 8), 8) else { return Errno::Fault.into() };
        let ptr = u32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = u32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        let Some(chunk) = read(&mut caller, ptr, len) else { return Errno::Fault.into() };
        text.extend_from_slice(&chunk);
    }
    let message = String::from_utf8_lossy(&text);
    let message = message.trim_end();
    if !message.is_empty() {
        // Panic messages arrive on stderr: log them as errors so a trap can be explained.
        let level = match fd {
            Fd::Stdout => LogLevel::Info,
            Fd::Stderr => LogLevel::Error,
        };
        log_line(caller.data_mut(), level, message);
    }
    errno_of_write(write_u32(&mut caller, return_written, text.len() as u32))
}

pub(super) fn environ_sizes_get(mut caller: Ctx<'_>, return_count: u32, return_buffer_size: u32) -> i32 {
    let entries = environ(caller.data());
    let size: usize = entries.iter().map(Vec::len).sum();
    let (Ok(count), Ok(size)) = (u32::try_from(entries.len()), u32::try_from(size)) else {
        return Errno::Inval.into();
    };
    errno_of_write(write_u32(&mut caller, return_count, count) && write_u32(&mut caller, return_buffer_size, size))
}

/// `KEY=VALUE\0` strings packed into `buffer`, and a pointer to each in `pointers`, in the sizes
/// `environ_sizes_get` announced.
pub(super) fn environ_get(mut caller: Ctx<'_>, pointers: u32, buffer: u32) -> i32 {
    let mut at = buffer;
    for (index, entry) in environ(caller.data()).iter().enumerate() {
        let slot = pointers.wrapping_add(4 * index as u32);
        if !write_u32(&mut caller, slot, at) || !write(&mut caller, at, entry) {
            return Errno::Fault.into();
        }
        at = at.wrapping_add(entry.len() as u32);
    }
    Errno::Success.into()
}

pub(super) fn args_sizes_get(mut caller: Ctx<'_>, return_count: u32, return_buffer_size: u32) -> i32 {
    errno_of_write(write_u32(&mut caller, return_count, 0) && write_u32(&mut caller, return_buffer_size, 0))
}

pub(super) fn args_get(_: Ctx<'_>, _pointers: u32, _buffer: u32) -> i32 {
    Errno::Success.into()
}

pub(super) fn proc_exit(_: Ctx<'_>, code: i32) -> wasmtime::Result<()> {
    Err(format_err!("the filter called proc_exit({code})"))
}

pub(super) fn clock_time_get(mut caller: Ctx<'_>, clock_id: i32, _precision: i64, return_time: u32) -> i32 {
    let nanos = match ClockId::try_from(clock_id) {
        // To the microsecond, as Envoy's runtimes answer it.
        Ok(ClockId::Realtime) => caller.data().env.clock.unix_nanos() / 1_000 * 1_000,
        Ok(ClockId::Monotonic | ClockId::ProcessCputime | ClockId::ThreadCputime) => {
            caller.data().started.elapsed().as_nanos() as u64
        }
        Err(errno) => return errno.into(),
    };
    errno_of_write(write(&mut caller, return_time, &nanos.to_le_bytes()))
}

pub(super) fn random_get(mut caller: Ctx<'_>, buffer: u32, buffer_size: u32) -> i32 {
    let mut bytes = vec![0u8; buffer_size as usize];
    if getrandom::fill(&mut bytes).is_err() {
        return Errno::Nosys.into();
    }
    errno_of_write(write(&mut caller, buffer, &bytes))
}

/// A filter has no preopened directories: this ends libc's scan for them.
pub(super) fn fd_prestat_get(_: Ctx<'_>, _fd: i32, _return_prestat: u32) -> i32 {
    Errno::Badf.into()
}

/// The errno of a call whose last step wrote its answer: EFAULT when the filter's pointer is out of
/// bounds.
fn errno_of_write(ok: bool) -> i32 {
    if ok { Errno::Success } else { Errno::Fault }.into()
}

/// The VM's environment as WASI hands it over: `KEY=VALUE` followed by a NUL, one per variable.
fn environ(state: &VmState) -> Vec<Vec<u8>> {
    state
        .spec
        .environment
        .iter()
        .map(|(key, value)| {
            let mut entry = Vec::with_capacity(key.len() + value.len() + 2);
            entry.extend_from_slice(key.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            entry.push(0);
            entry
        })
        .collect()
}

/// Links a WASI function this host does not implement: it answers ENOSYS, or traps with a clear
/// message when its signature has no errno to answer with.
pub(crate) fn link_unsupported_wasi(linker: &mut Linker<VmState>, name: &str, ty: FuncType) -> anyhow::Result<()> {
    let name = name.to_string();
    let returns_errno = ty.results().len() == 1 && ty.results().all(|r| r.is_i32());
    linker.func_new(WASI, &name.clone(), ty, move |_caller, _params, results| {
        if returns_errno {
            results[0] = Val::I32(Errno::Nosys.into());
            Ok(())
        } else {
            Err(format_err!("the filter called WASI `{name}`, which this host does not provide"))
        }
    })?;
    Ok(())
}
