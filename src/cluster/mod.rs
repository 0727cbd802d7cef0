//! Cluster decisions that no single host's plan can make: they need every node's facts at
//! once (who may bootstrap, who joins whom, whether a restart keeps quorum). Pure, like
//! `plan/`: facts in, steps out. The steps travel inside the plan as ordinary changes of
//! the node hosts (`galera_node:<cluster>`), so rendering, counting, saving, drift and
//! staleness work as for any change; the Galera executor runs them after the host scripts.
//!
//! Architecture invariant: `cluster/` imports `plan/` (the step types live in
//! `plan::step::galera`), never the reverse; like `plan/`, it touches no transport.

pub mod galera;
