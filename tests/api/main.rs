//! Black-box tests: the real `gatehouse` binary on port 0, spoken to over HTTP.
//! One module per capability; [`harness`] starts and stops servers.
//!
//! These tests watch a real process from outside, so they measure real time
//! (how fast a socket is closed, how long a login takes); the rules inside
//! the service are tested with a manual clock in the actors crate.
#![allow(clippy::disallowed_methods)]

mod abuse;
mod accounts;
mod admin;
mod cli;
mod durability;
mod edges;
mod email;
mod hardening;
mod harness;
mod mfa;
mod monitoring;
mod pages;
mod postgres;
mod resilience;
mod scale_out;
mod sessions;
mod signing;
mod tokens;
mod verifiers;
