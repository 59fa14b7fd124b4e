//! The load generator's side of the Redis protocol: its requests, and the check of every
//! reply.
