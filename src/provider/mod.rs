//! Sources of hosts. `static` hosts need nothing; `lab` hosts are local containers made by
//! [`lab`].

pub mod ec2;
pub mod known_hosts;
pub mod lab;
