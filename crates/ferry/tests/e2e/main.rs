//! End-to-end tests: each module runs the real `ferry` binary (built by cargo for this test
//! target) on a config in a temp dir and talks to it over real loopback sockets. One test
//! binary instead of one per file: the workspace links once, not two dozen times.

mod common;

mod admin_api;
mod admin_audit;
mod admin_scope;
mod admin_tls;
mod alerts;
mod audit;
mod bridge;
mod canary;
mod cert_reload;
mod channel_tests;
mod cli;
mod cluster;
mod crash;
mod dedupe;
mod encryption;
mod example;
mod example_tests;
mod filters;
mod hl7;
mod lanes;
mod lifecycle;
mod malformed;
mod message_search;
mod outcomes;
mod pipeline;
mod postgres;
mod prune;
mod responses;
mod revocation;
mod routing;
mod security;
mod tls_matrix;
mod transforms;
