//! The signalling message set between clients, supernodes and relays, carried inside
//! authenticated sessions ([`crate::session`]): requests (answered exactly once by the session's
//! transactions), their responses, and unreliable messages.
//!
//! Encoding: one version byte, then postcard. Compact, and serde keeps it readable; the session
//! layer bounds every message to one datagram, so nothing here needs its own fragmentation.
//! Human-facing JSON never travels between nodes (DESIGN §3).

mod members;

use std::net::SocketAddr;

pub use members::{
    Digest, MAX_RESTARTS, PAGE_MARGIN, Pager, PagerStep, digest as members_digest,
    page as members_page,
};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::{
    Check, NodeKey, RecordKind, RecordPayload, RecordPolicy, Timestamp, UserId, verify_record,
};

/// Wire version of this message set.
pub const VERSION: u8 = 1;

/// Why bytes are not a message of this set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unsupported signalling version {0}")]
    Version(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Encodes `msg` with the version byte.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend(postcard::to_allocvec(msg).expect("signalling types always serialize"));
    out
}

/// Decodes a message encoded by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&VERSION, rest)) => {
            // Trailing bytes make a message malformed, not a shorter one: what was signed or
            // meant is not what would be acted on.
            let (msg, tail) = postcard::take_from_bytes(rest)
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
            if !tail.is_empty() {
                return Err(DecodeError::Malformed(format!(
                    "{} trailing bytes",
                    tail.len()
                )));
            }
            Ok(msg)
        }
        Some((v, _)) => Err(DecodeError::Version(*v)),
    }
}

/// What a user signs to register (a [`RecordKind::Registration`] record): where it is
/// connected, how to reach it, and the name it holds, if any.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The supernode the client is connected to.
    pub supernode: UserId,
    /// Addresses the client was seen at (server-reflexive first): a hint for calls.
    pub addrs: Vec<SocketAddr>,
}

impl RecordPayload for Registration {
    const KIND: RecordKind = RecordKind::Registration;
}

/// A directory entry, as homes store and serve it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The user's signed registration record: anyone can verify it. Shared, not copied: the
    /// supernode a user registers through keeps it for the offline notice, and as one of the
    /// user's homes stores the same bytes.
    pub record: std::sync::Arc<[u8]>,
    /// The held name, if any.
    pub name: Option<String>,
    pub online: bool,
    /// Unix seconds when the user was last known online.
    pub last_seen: u64,
    /// The supernode the user is connected to.
    pub via: UserId,
    /// That supernode is gone and the user has not registered again yet: the entry is the last
    /// known state, not a live one.
    pub stale: bool,
}

impl Entry {
    /// The user whose registration record this entry carries, if the record's signature holds
    /// and the record names the supernode the entry says the user is connected through; `None`
    /// for an entry nobody signed (a forged or damaged one). Time is not checked: an entry is
    /// the last known state, and it outlives its record while the user stays connected.
    pub fn signer(&self) -> Option<UserId> {
        let check = Check {
            now: Timestamp(0),
            expected_signer: None,
            newer_than: None,
            policy: RecordPolicy {
                max_clock_skew: u64::MAX,
                ..RecordPolicy::default()
            },
        };
        verify_record::<Registration>(&self.record, &check)
            .ok()
            .filter(|r| r.payload.supernode == self.via)
            .map(|r| r.id)
    }
}

/// What to look up.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Id(UserId),
    Name(String),
}

/// Credentials for one relay, minted by a supernode from the secret that relay gave it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RelayOffer {
    pub relay: UserId,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub realm: String,
    pub username: String,
    pub password: String,
    pub expires_at: u64,
    /// Allocations the relay reported, for the client's choice.
    pub load: u32,
}

/// A supernode as a client or another supernode may contact it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub key: NodeKey,
    pub addr: SocketAddr,
}

/// Requests, by sender role: clients (`C*`), supernodes (`P*`, for peer), relays (`R*`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Register (or re-register) with a signed [`Registration`] record.
    CRegister {
        record: Vec<u8>,
    },
    /// Keep the registration alive (the session authenticates; no signature needed).
    CRefresh,
    CLookup(Target),
    /// Push presence changes of this user to me.
    CWatch(UserId),
    CUnwatch(UserId),
    /// Claim a human name with a signed claim record.
    CClaim {
        claim: Vec<u8>,
    },
    /// Deliver an opaque payload (signed by the sender, end to end) to a user's client.
    CRoute {
        to: UserId,
        payload: Vec<u8>,
    },
    /// Relays with fresh credentials.
    CRelays,
    /// This session is my warm standby; `primary` is the supernode I am registered through.
    CStandby {
        primary: UserId,
    },
    /// The supernodes this one knows (for the client's host cache), in one answer: refused
    /// (413) when the list does not fit in one frame. Superseded by [`Request::CMembersPage`].
    CMembers,

    /// Store (replicate) an entry at one of its homes.
    PStore {
        user: UserId,
        entry: Entry,
    },
    /// The entry of a user homed here.
    PFetch(UserId),
    /// Which user holds this name (at the name's homes).
    PFetchName(String),
    /// Supernode `watcher` wants presence of `user` (sent to `user`'s homes).
    PWatch {
        user: UserId,
        watcher: UserId,
    },
    PUnwatch {
        user: UserId,
        watcher: UserId,
    },
    /// Deliver a routed payload to `to`, connected to the receiving supernode.
    PForward {
        from: UserId,
        to: UserId,
        payload: Vec<u8>,
    },
    /// Order (and then store) a name claim: sent to the name's first home.
    PClaim {
        claim: Vec<u8>,
    },
    /// Replicate an admitted claim, stamped by its orderer, to the other homes.
    PClaimStore {
        claim: Vec<u8>,
        orderer: UserId,
        order: u64,
        received_at: u64,
    },

    /// A relay authorises this supernode: its addresses and the secret for this pair.
    RHello {
        udp: Vec<SocketAddr>,
        tcp: Vec<SocketAddr>,
        tls: Vec<SocketAddr>,
        realm: String,
        secret: Vec<u8>,
        load: u32,
    },

    /// On the primary's session: this supernode is my warm standby. When the mesh declares it
    /// dead, the primary tells the client ([`Message::StandbyLost`]) so a new standby is ready
    /// before the primary fails too. (Appended last: variant indexes are the wire format.)
    CStandbyIs {
        standby: UserId,
    },
    /// One page of the supernodes this one knows, sorted by ID: those after the ID `after`
    /// (from the start with `None`). With `digest` the asker holds a complete list: an
    /// unchanged list is answered with an empty page. See [`members`](self::members_page).
    CMembersPage {
        after: Option<UserId>,
        digest: Option<Digest>,
    },
    /// Promotion ([`crate::roles`]): what the mesh needs, dial-back, grants. One variant with
    /// its own enum, appended last, so later promotion messages extend that enum instead.
    CRoles(RolesRequest),
    /// A member asks: send this dial-back probe (its client's second, from another vantage
    /// point) to `to`, from the socket no client contacted. Appended last.
    PProbe {
        to: SocketAddr,
        nonce: u64,
    },
}

/// A client's promotion request ([`Request::CRoles`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RolesRequest {
    /// How many relays and supernodes the mesh wants and has.
    Need,
    /// Probe my address (this session's source) from a socket I never contacted; the probe
    /// carries a nonce ([`crate::roles::probe`]) that I echo in [`RolesRequest::Promote`].
    DialBack,
    /// May I take `role`? `proof`: the nonces of your last dial-back's probes, XORed; `id`: the ID the
    /// role will run as (its relay hello or mesh join confirms the grant).
    Promote {
        role: crate::roles::Role,
        proof: u64,
        id: UserId,
    },
}

/// The answer to a [`RolesRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RolesAnswer {
    Need(crate::roles::Need),
    /// The probes are on their way (`probes` of them, from as many supernodes: 2 once the
    /// mesh has two); `reflexive` is where this session is seen from. The proof in
    /// [`RolesRequest::Promote`] is their nonces XORed.
    DialBack {
        reflexive: SocketAddr,
        probes: u8,
    },
    Grant {
        role: crate::roles::Role,
        granted: bool,
        need: crate::roles::Need,
    },
}

/// Responses (one per request).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Ok,
    Registered {
        expires_at: u64,
    },
    Entry(Entry),
    NotFound,
    Claimed {
        name: String,
    },
    Holder(Option<UserId>),
    Routed,
    Relays(Vec<RelayOffer>),
    Members(Vec<NodeInfo>),
    /// A refusal with a reason (codes like HTTP's: 400 bad request, 403 forbidden, 404 unknown,
    /// 409 conflict, 429 too many, 503 unavailable).
    Error {
        code: u16,
        reason: String,
    },
    /// A client's acknowledgement of a routed payload, with a reply for the sender (the callee's
    /// ringing rides it). Supernodes pass it back unread. (Appended last: the wire format.)
    Reply(Vec<u8>),
    /// A page of members ([`Request::CMembersPage`]): `next` is the cursor for the next page
    /// (`None`: the last one), `digest` that of the whole list, `total` its length.
    MembersPage {
        members: Vec<NodeInfo>,
        next: Option<UserId>,
        digest: Digest,
        total: u32,
    },
    /// The answer to [`Request::CRoles`]. (Appended last.)
    Roles(RolesAnswer),
}

/// Unreliable messages.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// SWIM membership traffic between supernodes.
    Swim(Vec<u8>),
    /// A presence change, home → watching supernode → watching client.
    Presence {
        user: UserId,
        online: bool,
        last_seen: u64,
        stale: bool,
    },
    /// Standby supernode → client, as a request (retransmitted until acknowledged or the
    /// session dies): the mesh declared your primary supernode dead; register through me.
    PrimaryLost { primary: UserId },
    /// A relay's current load, relay → supernode.
    RLoad { allocations: u32 },
    /// A routed payload, supernode → client (also sent as a request for the ack).
    Deliver { from: UserId, payload: Vec<u8> },
    /// Primary supernode → client, as a request like [`Message::PrimaryLost`]: the mesh declared
    /// your standby supernode dead; open another.
    StandbyLost { standby: UserId },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let id = UserId([7; 20]);
        let msgs = vec![
            Request::CLookup(Target::Name("alice".into())),
            Request::CRoute {
                to: id,
                payload: vec![1, 2, 3],
            },
            Request::PWatch {
                user: id,
                watcher: id,
            },
        ];
        for m in msgs {
            let bytes = encode(&m);
            assert_eq!(decode::<Request>(&bytes).unwrap(), m);
        }
        assert_eq!(decode::<Request>(&[]), Err(DecodeError::Empty));
        assert_eq!(decode::<Request>(&[9, 0]), Err(DecodeError::Version(9)));
        let mut long = encode(&Request::CRefresh);
        long.push(0);
        assert!(matches!(
            decode::<Request>(&long),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(&[VERSION, 200]),
            Err(DecodeError::Malformed(_))
        ));
    }
}
