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
//! 6. verify — re-plan must be empty, then health checks ([`ops::verify`]).
//!
//! Every byte of shell kiln sends is built with [`shell`]: quoted operands, the preludes,
//! and users' own commands as isolated units.
//!
//! I/O lives only in [`ops`], [`transport`] and [`provider`]; `spec`, `desired`, `resource`
//! and `plan` never touch a host.

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
