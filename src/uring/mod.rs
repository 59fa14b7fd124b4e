//! The one io_uring layer, used by the server engine (`proactor`) and the load generator
//! (`load`) alike: the ring and its single push boundary (`ring`), the provided-buffer ring
//! (`bufring`), `user_data` encoding over each user's own operation kinds (`user_data`), and
//! what the kernel must offer, checked by name (`probe`). Needs Linux 6.1+.

pub mod bufring;
pub mod probe;
pub mod ring;
pub mod user_data;

pub use ring::{BATCH_WANT, CQ_ENTRIES, Completion, ConnectSteps, Ring, RingConfig, SQ_ENTRIES};
pub(crate) use user_data::op_kinds;
pub use user_data::{GEN_MASK, Op, UserData};
