//! kodev: build Go main packages into OCI images the way ko does, push them,
//! and rebuild what a change touches.
//!
//! Data flows one way: `config` → `Plan` → `pipeline` → `Event`s → renderers.

pub mod cli;
pub mod config;
pub mod dev;
pub mod error;
pub mod event;
pub mod headless;
pub mod pipeline;
pub mod platform;
pub mod stamp;
pub mod ui;

pub use error::{KodevError, Result};
