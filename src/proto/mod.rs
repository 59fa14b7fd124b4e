//! Protocols, shared by both engines and the load generator's checks: pure code, bytes in and
//! bytes out, no I/O, no unsafe.

pub mod echo;
pub mod http;
pub mod redis;
