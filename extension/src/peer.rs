//! Peer messages (`chips_core::peer`): which SQL function receives each message, and the size
//! limits of what a site sends, for sql/peer.sql and sql/chits.sql. The table and the limits are
//! core's, shared with the sidecar, which refuses an envelope naming any other message.

use chips_core::peer;
use pgrx::prelude::*;

/// The SQL function (in schema chips) that receives message `target`/`action`, or null when
/// there is no such message.
#[pg_extern(immutable, parallel_safe, name = "_receiver")]
fn receiver(target: &str, action: &str) -> Option<&'static str> {
    peer::receiver(target, action)
}

/// The lane message `target`/`action` travels in (`peer::Lane`: 'ordered' or 'route'), or null
/// when there is no such message; `chips.outbox_claim` claims a lane's messages by it.
#[pg_extern(immutable, parallel_safe, name = "_lane")]
fn lane(target: &str, action: &str) -> Option<&'static str> {
    peer::message(target, action).map(|m| m.lane.as_str())
}

/// The most bytes of a message's JSON a site sends another (`peer::MAX_MESSAGE_BYTES`).
#[pg_extern(immutable, parallel_safe, name = "_max_message_bytes")]
fn max_message_bytes() -> i32 {
    peer::MAX_MESSAGE_BYTES as i32
}

/// The most bytes of chain entries in one `chit/chain` message (`peer::MAX_CHAIN_BATCH_BYTES`).
#[pg_extern(immutable, parallel_safe, name = "_max_chain_batch_bytes")]
fn max_chain_batch_bytes() -> i32 {
    peer::MAX_CHAIN_BATCH_BYTES as i32
}
