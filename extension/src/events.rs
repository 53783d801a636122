//! The event feed is numbered at commit by a deferred trigger that fires once per pending event
//! row (sql/access.sql, `chips._events_number`); its first firing numbers every event the
//! transaction has made and moves them to `chips.events`. These two functions keep, in the backend, which events of the running
//! transaction that covered, so the other firings return at once instead of each asking the
//! table (a clearing pass makes thousands of events in one transaction).

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::prelude::*;

thread_local! {
    /// (the transaction's full xid, the highest event id it has numbered)
    static NUMBERED: Cell<(u64, i64)> = const { Cell::new((0, 0)) };
}

fn current_xid() -> u64 {
    // SAFETY: reads the top transaction's full xid (0 when it has none); valid in any transaction.
    unsafe { pg_sys::GetTopFullTransactionIdIfAny().value }
}

/// Whether event `id` of the running transaction has been numbered already.
#[pg_extern(volatile, parallel_unsafe, name = "_events_numbered")]
fn events_numbered(id: i64) -> bool {
    let (xid, upto) = NUMBERED.with(Cell::get);
    xid != 0 && xid == current_xid() && id <= upto
}

/// Records that the running transaction has numbered its events up to `upto`.
#[pg_extern(volatile, parallel_unsafe, name = "_events_mark")]
fn events_mark(upto: i64) {
    NUMBERED.with(|n| n.set((current_xid(), upto)));
}

/// Whether the statement running is a COPY (pg_restore): rows it loads make no events (the
/// restored history carries its own). Reads the statement's text, as `current_query()` does.
#[pg_extern(stable, parallel_safe, name = "_restoring")]
fn restoring() -> bool {
    // SAFETY: debug_query_string is null or the running statement's NUL-terminated text, valid
    // for the whole statement.
    let query = unsafe { pg_sys::debug_query_string };
    if query.is_null() {
        return false;
    }
    let text = unsafe { CStr::from_ptr(query) }.to_bytes();
    let text = &text[text.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    text.len() > 5 && text[..5].eq_ignore_ascii_case(b"copy ")
}
