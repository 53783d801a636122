//! `chips-core`: everything in chips that needs neither a database nor a runtime.
//!
//! * [`canon`]: canonical JSON (RFC 8785) and SHA-256 digests, the bytes every signature and hash
//!   chain is computed over.
//! * [`codec`]: base64url without padding, the text form of keys, signatures and digests.
//! * [`sign`]: Ed25519 keys and signatures (verification happens inside the database).
//! * [`address`]: CHIP addresses `cuid:agent[@host:port]`.
//! * [`tally`]: tally status machine, certificates, credit terms, trading variables and the
//!   signed tally document.
//! * [`ticket`]: invitation tokens.
//! * [`chit`]: chit documents, the chit status machine, settings, chain hashes.
//! * [`clearing`]: the exact optimum of credit lifts (min-cost circulation) and its circles.
//! * [`liftable`]: the liftable graph of tallies (trading variables, limits, costed capacity)
//!   and its clearing, whole or through one node.
//! * [`pass`]: a clearing pass as one circulation (moves per tally, its circles), shrunk to
//!   what the tallies can carry when it is written, and cut into pieces.
//! * [`round`]: clearing rounds across sites: pseudonymous site graphs, the coordinator's
//!   solve over their union, each site's check of its part.
//! * [`peer`]: frame types, the peer message envelope, Noise IK sessions keyed by agent keys.
//!
//! Every fallible function returns [`Error`]; the extension maps its [`ErrorKind`] to a SQLSTATE.

pub mod address;
pub mod canon;
pub mod chit;
pub mod clearing;
pub mod codec;
pub mod error;
pub mod liftable;
pub mod pass;
pub mod peer;
pub mod round;
pub mod route;
pub mod sign;
pub mod tally;
pub mod ticket;

pub use error::{Error, ErrorKind, Result};
