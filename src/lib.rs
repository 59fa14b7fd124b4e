//! c1m: a Proactor (io_uring) TCP server, its Reactor (epoll) baseline, the load generator
//! that measures them, and the bench that compares them, up to 1,000,000 connections on one
//! Linux host. README.md is the user guide; ARCHITECTURE.md the layers and invariants.

pub mod cli;
pub mod config;
pub mod error;
pub mod load;
pub mod models;
pub mod plan;
pub mod proactor;
pub mod proto;
pub mod reactor;
pub mod server;
pub mod stats;
pub mod sys;
pub mod timer;
pub mod uring;
