//! Appliance management (DESIGN.md §2, issue 6): the parts of BAMS that manage the machine
//! rather than the backups. Every OS command goes through [`runner::CommandRunner`], so the
//! appliance is testable where the hardware is missing and every command is logged.
//!
//! Built so far: the command runner and disk repositories (directory, filesystem on a loop
//! file or an allowed block device, btrfs subvolume). Tape,
//! iSCSI, Bacula SD, logs and diagnostics come with the rest of issue 6.

pub mod bacula;
pub mod disk;
pub mod diskrepo;
pub mod lvm;
pub mod runner;
pub mod zfs;
