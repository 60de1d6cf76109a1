//! The numbers of proxy-wasm ABI v0.2.1 (the spec's "Types"), named as the proxy-wasm Rust SDK's
//! `types.rs` names them, and the WASI numbers the host answers with.
//!
//! A host call receives each of these as a bare integer; `TryFrom` turns it into the enum, and a
//! number the ABI does not define is the error the call then answers (BAD_ARGUMENT for proxy-wasm
//! calls).

/// Declares an ABI enum with its numbers (`enum Name: repr, unknown Error::Variant { … }`) and
/// the `TryFrom` that reads it from a host call's argument: a number the ABI does not define is
/// `Error::Variant`.
macro_rules! abi_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ident, unknown $error:ident::$unknown:ident {
            $($(#[$doc:meta])* $variant:ident = $number:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$doc])* $variant = $number,)*
        }

        impl TryFrom<$repr> for $name {
            type Error = $error;

            fn try_from(number: $repr) -> Result<Self, $error> {
                match number {
                    $($number => Ok(Self::$variant),)*
                    _ => Err($error::$unknown),
                }
            }
        }
    };
}

/// `proxy_status_t`: what every `env` host call returns. Only the statuses this host answers are
/// here (the ABI also has SERIALIZATION_FAILURE, INVALID_MEMORY_ACCESS and UNIMPLEMENTED). The SDKs panic on any status a call does not expect, so each host call answers
/// only those its callers handle.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    ParseFailure = 4,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

impl From<Status> for u32 {
    fn from(status: Status) -> u32 {
        status as u32
    }
}

abi_enum! {
    /// `proxy_log_level_t`.
    pub(crate) enum LogLevel: u32, unknown Status::BadArgument {
        Trace = 0,
        Debug = 1,
        Info = 2,
        Warn = 3,
        Error = 4,
        Critical = 5,
    }
}

abi_enum! {
    /// `proxy_buffer_type_t`: which buffer `proxy_get_buffer_bytes` and `proxy_set_buffer_bytes`
    /// act on.
    pub(crate) enum BufferType: u32, unknown Status::BadArgument {
        HttpRequestBody = 0,
        HttpResponseBody = 1,
        DownstreamData = 2,
        UpstreamData = 3,
        HttpCallResponseBody = 4,
        GrpcReceiveBuffer = 5,
        VmConfiguration = 6,
        PluginConfiguration = 7,
        CallData = 8,
    }
}

abi_enum! {
    /// `proxy_map_type_t`: which header map the `proxy_*_header_map_*` calls act on.
    pub(crate) enum MapType: u32, unknown Status::BadArgument {
        HttpRequestHeaders = 0,
        HttpRequestTrailers = 1,
        HttpResponseHeaders = 2,
        HttpResponseTrailers = 3,
        GrpcReceiveInitialMetadata = 4,
        GrpcReceiveTrailingMetadata = 5,
        HttpCallResponseHeaders = 6,
        HttpCallResponseTrailers = 7,
    }
}

abi_enum! {
    /// `proxy_stream_type_t`: which half of a stream `proxy_continue_stream` and
    /// `proxy_close_stream` act on.
    pub(crate) enum StreamType: u32, unknown Status::BadArgument {
        HttpRequest = 0,
        HttpResponse = 1,
        Downstream = 2,
        Upstream = 3,
    }
}

abi_enum! {
    /// `proxy_metric_type_t`: the kinds of metric `proxy_define_metric` makes.
    pub enum MetricType: u32, unknown Status::BadArgument {
        Counter = 0,
        Gauge = 1,
        Histogram = 2,
    }
}

/// The gRPC status `proxy_get_status` reports: UNKNOWN, as this host makes no gRPC calls.
pub(crate) const GRPC_STATUS_UNKNOWN: u32 = 2;

/// `wasi_errno_t`: what the WASI functions return. Only those this host answers are here.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Errno {
    Success = 0,
    Badf = 8,
    Fault = 21,
    Inval = 28,
    Nosys = 52,
}

impl From<Errno> for i32 {
    fn from(errno: Errno) -> i32 {
        errno as i32
    }
}

abi_enum! {
    /// `wasi_fd_id_t`: the only descriptors a filter has; any other is EBADF.
    pub(crate) enum Fd: i32, unknown Errno::Badf {
        Stdout = 1,
        Stderr = 2,
    }
}

abi_enum! {
    /// `wasi_clock_id_t`, with the two CPU-time clocks WASI preview 1 also defines; any other is
    /// EINVAL.
    pub(crate) enum ClockId: i32, unknown Errno::Inval {
        Realtime = 0,
        Monotonic = 1,
        ProcessCputime = 2,
        ThreadCputime = 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_abi() {
        assert_eq!(MapType::try_from(0), Ok(MapType::HttpRequestHeaders));
        assert_eq!(MapType::try_from(7), Ok(MapType::HttpCallResponseTrailers));
        assert_eq!(MapType::try_from(8), Err(Status::BadArgument));
        assert_eq!(BufferType::try_from(7), Ok(BufferType::PluginConfiguration));
        assert_eq!(BufferType::try_from(9), Err(Status::BadArgument));
        assert_eq!(LogLevel::try_from(5), Ok(LogLevel::Critical));
        assert_eq!(StreamType::try_from(3), Ok(StreamType::Upstream));
        assert_eq!(MetricType::try_from(2), Ok(MetricType::Histogram));
        assert_eq!(MetricType::try_from(3), Err(Status::BadArgument));
        assert_eq!(u32::from(Status::InternalFailure), 10);
        assert_eq!(u32::from(Status::ParseFailure), 4);
        assert_eq!(i32::from(Errno::Nosys), 52);
        assert_eq!(ClockId::try_from(3), Ok(ClockId::ThreadCputime));
        assert_eq!(ClockId::try_from(4), Err(Errno::Inval));
        assert_eq!(Fd::try_from(2), Ok(Fd::Stderr));
        assert_eq!(Fd::try_from(0), Err(Errno::Badf));
    }
}
