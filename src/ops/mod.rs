//! Commands: one thin file per command (like cargo's `commands` → `ops`): arguments in,
//! the engine's pipeline, output and an exit code out. The shared pipeline is `engine`.

pub mod apply;
pub mod backup;
pub mod clone;
pub mod drift;
pub mod ec2;
pub mod explain;
pub mod graph;
pub mod lab;
pub mod modules;
pub mod plan;
pub mod rebuild;
pub mod secret;
pub mod ssh;
pub mod verify;
