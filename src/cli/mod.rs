//! Subcommands that help write functions rather than run them.

pub mod build;
pub mod new;
