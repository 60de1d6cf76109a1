//! ory-proxy's runner: a native proxy-wasm host that runs the ory-proxy filter as a local proxy.
//!
//! - the host, a generic proxy-wasm ABI v0.2.1 host on wasmtime that knows nothing about Ory,
//!   is its own crate, [`proxy_wasm_host`] (`host/`).
//! - [`proxy`] is the HTTP side: hyper server and client, routes and clusters in Envoy's terms.
//! - [`deployment`] turns what the user asked for into a deployment and its plan: filter
//!   configuration, clusters, routes; [`cli`] parses the command line for it; [`local`] starts it; [`envoy`] prints it
//!   as an Envoy bootstrap.
//! - [`tls`] keeps the local CA and makes the serving certificate; [`trust`] installs the CA
//!   where browsers look for it.

pub mod cli;
pub mod deployment;
pub mod doctor;
pub mod envoy;
pub mod home;
pub mod local;
pub mod ory_url;

pub mod proxy;
pub mod tls;
pub mod trust;
