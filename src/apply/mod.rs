//! Apply: a host's planned changes become one script ([`script`]), run by `ops::apply`
//! through a transport. Apply never re-decides: it runs exactly the steps of the plan.

pub mod script;
