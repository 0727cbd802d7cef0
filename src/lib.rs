//! kiln turns a TOML description of Debian servers into a precise plan and applies it.
//!
//! The pipeline, in reading order:
//!
//! 1. [`spec`] — load `environments/*.toml` (following `extends`), `modules/*.toml` and
//!    secret references; every error names file, line, column and key.
//! 2. [`desired`] — expand roles → modules → [`resource`]s per host, rendering templates
//!    with strict undefined variables. Pure.
//! 3. [`facts`] — one generated `sh` script per host reads everything the plan needs; its
//!    output is parsed by pure parsers.
//! 4. [`plan`] — a graph over all hosts' resources; each resource's pure plan function
//!    compares desired state with facts. The [`plan::Plan`] is a serialisable value.
//! 5. [`apply`] — the plan's steps become one script per host: locked, atomic, journalled.
//!    Galera cluster steps run after the hosts' scripts ([`apply::cluster`]).
//! 6. [`verify`] — re-plan must be empty, then health checks; the drift report.
//!
//! [`engine`] is the pipeline every command shares (load, connect, gather, plan); [`ops`]
//! holds one thin file per command. Every byte of shell kiln sends is built with [`shell`]:
//! quoted operands, the preludes, and users' own commands as isolated units.
//!
//! Host I/O lives only in [`engine`], [`apply::run`], [`apply::cluster`], [`verify`] and
//! [`provider`], through [`transport`]; `spec`, `desired`, `resource`, `facts`, `plan` and
//! `cluster` never touch a host. `tests/layering.rs` holds the layers to that order.

pub mod apply;
pub mod cli;
pub mod cluster;
pub mod desired;
pub mod engine;
pub mod facts;
pub mod ops;
pub mod plan;
pub mod provider;
pub mod resource;
pub mod shell;
pub mod spec;
pub mod state;
pub mod transport;
pub mod ui;
pub mod verify;
