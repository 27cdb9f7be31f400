//! Black-box tests: the real `gatehouse` binary on port 0, spoken to over HTTP.
//! One module per capability; [`harness`] starts and stops servers.

mod abuse;
mod accounts;
mod cli;
mod durability;
mod edges;
mod hardening;
mod harness;
mod monitoring;
mod postgres;
mod resilience;
mod scale_out;
mod sessions;
mod tokens;
