//! ory-proxy's runner: a native proxy-wasm host that runs the ory-proxy filter as a local proxy.
//!
//! - [`host`] is a generic proxy-wasm ABI v0.2.1 host on wasmtime; it knows nothing about Ory.
//! - [`proxy`] is the HTTP side: hyper server and client, routes and clusters in Envoy's terms.
//! - [`plan`] turns the command line into a deployment plan: filter configuration, clusters, routes.

pub mod host;
