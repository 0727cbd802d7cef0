//! Apply: a host's planned changes become one script ([`script`], pure), run through the
//! host's transport by [`run`]; a plan's Galera steps are run after the host scripts by
//! [`cluster`], re-reading live state before each. Apply never re-decides: it runs exactly
//! the steps of the plan (a saved plan's changes whose facts moved are refused as stale).

pub mod cluster;
pub mod run;
pub mod script;
