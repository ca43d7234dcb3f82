//! Call tracking: the pure state machine from AMI events to Bitrix24 intents.

pub mod adopt;
pub mod channel;
pub mod intent;
pub mod status;
pub mod tracker;

pub use intent::{Action, Direction, FinishUser, Intent};
pub use status::Status;
pub use tracker::{CallSummary, MissedUser, Tracker, TrackerConfig, Transfer};
