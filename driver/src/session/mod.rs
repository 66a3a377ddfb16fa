//! Established sessions: what happens after `WELCOME`, CWP/1 §3.
//!
//! - [`context`]: what every established session shares ([`Sessions`]),
//!   and how an ended session is unregistered everywhere;
//! - [`established`]: the session loop, carrying out what
//!   [`cwp::ServerSession`]'s rules decide for each frame; where a new
//!   session starts, parks and resumes;
//! - [`park`]: quiet sessions held with no task until they are needed;
//! - [`idle`]: the sweep that parks quiet sessions and closes silent ones.
//!
//! Sessions are found, and reached by the rest of the driver, through the
//! [`crate::registry`].
//!
//! Each session's task holds [`Sessions`] (one pointer) and nothing of the
//! handshake. The files import one another without a cycle: `park` knows
//! nothing of the loop (it hands a session back through a function the
//! driver gives it), the loop knows the park.

pub mod context;
pub mod established;
pub mod idle;
pub mod park;

pub use context::{SessionSettings, Sessions};
