//! Appliance management (docs/design.md §2, issue 6): the parts of BAMS that manage the machine
//! rather than the backups. Every OS command goes through [`runner::CommandRunner`], so the
//! appliance is testable where the hardware is missing and every command is logged.

pub mod bacula;
pub mod disk;
pub mod diskrepo;
pub mod doctor;
mod error;
pub mod files;
pub mod iscsi;
pub mod logs;
pub mod lvm;
pub mod runner;
pub mod tape;
pub mod zfs;

pub use error::ApplianceError;
