//! `chips`: mutual credit inside PostgreSQL.
//!
//! This crate is a thin shell: the rules that need no database live in `chips-core`; the tables,
//! state machines, row-level security and peer messages are SQL (`sql/*.sql` at the workspace
//! root, pulled in below). The functions here expose core to SQL with SQLSTATEs attached.

use pgrx::prelude::*;

mod chit;
mod clearing;
mod continuous;
mod crypto;
mod error;
mod events;
mod pay;
mod peer;
mod rounds;
mod route;
mod tally;

::pgrx::pg_module_magic!(name, version);

// Tables, roles and pg_dump marks first; then the functions (Rust and PL/pgSQL, in any order: a
// PL/pgSQL body is not resolved until it runs); last the triggers, views, row-level security and
// grants, which need every function to exist.
extension_sql_file!("../../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../../sql/identity.sql",
    name = "identity",
    requires = ["schema", tally::iso]
);
extension_sql_file!(
    "../../sql/peer.sql",
    name = "peer",
    requires = ["schema", "identity"]
);
extension_sql_file!(
    "../../sql/tally.sql",
    name = "tally",
    requires = ["schema", "identity", "peer", tally::tally_doc_make]
);
extension_sql_file!(
    "../../sql/chits.sql",
    name = "chits",
    requires = ["schema", "tally", chit::chit_change]
);
extension_sql_file!(
    "../../sql/clearing.sql",
    name = "clearing",
    requires = ["schema", "tally", "chits"]
);
extension_sql_file!(
    "../../sql/lifts.sql",
    name = "lifts",
    requires = ["schema", "tally", "chits", "clearing"]
);
extension_sql_file!(
    "../../sql/rounds.sql",
    name = "rounds",
    requires = ["schema", "tally", "chits", "lifts"]
);
extension_sql_file!(
    "../../sql/access.sql",
    name = "access",
    requires = ["schema", "tally", "chits"]
);
extension_sql_file!(
    "../../sql/admin.sql",
    name = "admin",
    requires = ["schema", "tally", "access"]
);
extension_sql_file!("../../sql/finalize.sql", name = "finalize", finalize);

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
