//! Endpoint handlers: thin. Each parses its input, asks the service it
//! needs and shapes the answer as a [`crate::wire`] type; rules and state live
//! in the actors crate, guards and bodies in [`crate::http`].

pub mod admin;
pub mod auth;
pub mod discovery;
pub mod monitoring;
pub mod pages;
pub mod recovery;
pub mod users;
