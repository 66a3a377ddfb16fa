//! The Drover driver: a CWP/1 server for controllers.
//!
//! Layout, following one device's data through it:
//!
//! - [`listener`] accepts connections (bounded) on the handshake thread
//!   ([`handshake::thread`]), apart from established sessions; `drover_service::proxy`
//!   reads HAProxy's PROXY v2 header when enabled; [`connection`] is the
//!   socket, its buffers and the codec.
//! - [`handshake`] runs HELLO → CHALLENGE → AUTH → WELCOME (slots and
//!   deadlines; failed-authentication limits, keys and the session's
//!   registration with the bridge from [`drover_edge`], which the HTTP
//!   gateway shares: [`drover_edge::AuthLimits`],
//!   [`drover_edge::KeyStore`], [`drover_edge::BridgeClient`]).
//! - [`session`] is the established session: its loop
//!   ([`session::established`], whose per-frame rules are
//!   [`cwp::ServerSession`]'s, free of I/O), the [`session::park`] where
//!   quiet sessions wait with no task, and the [`session::idle`] sweep;
//!   [`registry`] is the table of live sessions and their mailboxes, the
//!   only way other tasks (pipeline, commands, drain) reach a session.
//! - [`admission`] gives each event its room (`DRIVER_MAX_PENDING_EVENTS`)
//!   as a permit; [`pipeline`] gathers every session's events into batches
//!   for the event stream to the vendor-bridge
//!   ([`drover_edge::stream`]) and turns its durable confirmations into
//!   `ACK`s.
//! - [`commands`] holds the one Redis pub/sub connection: operators'
//!   commands to sessions, and supersede notices from the bridge.
//! - [`files`] serves rollouts' files to sessions (CWP/1 §3 Files): the
//!   offers and reports through the bridge client, each connection's transfer
//!   read by offset from `FILES_DIR`; a session sending one runs on the
//!   transfers' thread ([`runtime_thread`], at a lower CPU priority).
//! - [`upload`] receives uploads into one write buffer per uploading
//!   connection, stores them under `UPLOAD_DIR` and records completed ones
//!   through the bridge client.
//! - [`refusal`] is every `ERROR` the driver sends, and the one place a
//!   refusal becomes a frame.
//! - [`server`] builds all of it, runs it, and stops it in one order;
//!   `drover_service::admin` serves `/healthz` and `/metrics` ([`metrics`]); [`title`]
//!   keeps the process title (`ps`) current; [`config`] is every
//!   environment variable, parsed once.
//!
//! Each task receives the narrow handles it uses ([`handshake::Handshakes`],
//! [`session::Sessions`], …), and no module imports from this crate root.

pub mod admission;
pub mod commands;
pub mod config;
pub mod connection;
pub mod files;
pub mod handshake;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod refusal;
pub mod registry;
pub mod runtime_thread;
pub mod server;
pub mod session;
pub mod single_flight;
pub mod storm;
pub mod title;
pub mod upload;

pub use config::Config;
pub use server::{Listeners, run};
