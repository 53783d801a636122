//! `#[pg_test]`s: the SQL-callable units, run inside a rolled-back transaction.
