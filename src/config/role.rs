//! Which part of the work a `fnmill run` process does. The same config file serves every role;
//! each role starts only what it needs, and `fnmill check --role …` validates exactly that.

use std::fmt;

/// A process's role (`fnmill run --role`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Everything in one process: routes, functions, and every data source's pool (a data
    /// source's `remote` table is ignored). What fnmill did before there were roles.
    #[default]
    All,
    /// Routes and functions. A data source with a `remote` table is reached through its IO tier
    /// over NATS (this process opens no connection to it, and needs none of its secrets); one
    /// without stays a pool of this process.
    Compute,
    /// The pools of the data sources that have a `remote` table, served over NATS to compute
    /// processes. No routes, no functions run (their grants are read, to check every call
    /// again).
    Io,
}

impl Role {
    /// Whether the role runs routes, their sources and sinks, and the functions.
    pub fn runs_routes(self) -> bool {
        matches!(self, Role::All | Role::Compute)
    }

    /// Whether a data source gets a pool in this process, given whether it has `remote`.
    pub fn holds_pool(self, remote: bool) -> bool {
        match self {
            Role::All => true,
            Role::Compute => !remote,
            Role::Io => remote,
        }
    }

    /// Whether this process talks to a data source's IO tier (as client or as server).
    pub fn uses_remote(self, remote: bool) -> bool {
        remote && self != Role::All
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Compute => "compute",
            Role::Io => "io",
        })
    }
}
