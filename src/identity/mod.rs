//! Identity: keys, user IDs, signed records, name claims, key and contacts files (DESIGN.md §4).
//!
//! - [`Identity`]: the local Ed25519 key pair, the Noise static key derived from it and the
//!   [`Binding`] that ties them; loaded from or created in a 0600 key file ([`default_key_path`]),
//!   locked by the process that runs as it ([`IdentityLock`]: one process per identity).
//! - [`UserId`]: 160 bits of SHA-256 over the public key, printed as `vx1...` (Bech32m, so typos
//!   are caught: [`text`]). [`PublicKey`] (`vxpk1...`) and [`NodeKey`] (`vxk1...`, what a
//!   bootstrap entry `KEY@HOST:PORT` carries: [`BootstrapEntry`]) have text forms too.
//! - Signed records ([`sign_record`], [`verify_record`]): a versioned postcard envelope with
//!   sequence number, issue and expiry times, domain-separated Ed25519 signatures, and
//!   verification that names its reason ([`RecordError`]).
//! - Human names ([`name`]): first-come claims, admitted in the order the name's first home
//!   supernode receives them ([`admit_claim`]), merged by a pure rule ([`winner`]).
//! - [`Contacts`]: the local alias file, and [`Contacts::resolve`] for what a user typed.
//!
//! Nothing here reads a clock: times are passed in ([`Timestamp`]).

mod contacts;
mod id;
mod keys;
mod lock;
pub mod name;
mod record;
pub mod text;

pub use contacts::{Contacts, ContactsError, Target};
pub use id::{
    BootstrapEntry, BootstrapError, KeyError, NODE_KEY_PREFIX, NodeKey, PUBLIC_KEY_PREFIX,
    PublicKey, USER_ID_LEN, USER_ID_PREFIX, UserId,
};
pub use keys::{
    BINDING_DOMAIN, BINDING_LEN, Binding, BindingError, Identity, KEY_FILE_NAME, KeyFileError,
    SECRET_PREFIX, default_key_path, key_path_from,
};
pub use lock::IdentityLock;
pub use name::{
    Admission, ClaimRefusal, ClaimStamp, HeldClaim, NameClaim, NameError, admit_claim, name_key,
    normalize_name, winner,
};
pub use record::{
    Check, MAX_RECORD_LEN, RECORD_VERSION, Record, RecordError, RecordKind, RecordPayload,
    RecordPolicy, SignError, Timestamp, UnixClock, recheck_record, sign_raw, sign_record,
    verify_raw, verify_record,
};
