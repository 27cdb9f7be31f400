//! Black-box tests: the real `gatehouse` binary on port 0, spoken to over HTTP.
//! One module per capability; [`harness`] starts and stops servers.

mod accounts;
mod cli;
mod durability;
mod harness;
mod tokens;
