//! TURN (RFC 8656): the relay server's sans-IO core and its parts.
//!
//! - [`server`]: allocations, permissions, channels, authentication, quotas, drain.
//! - [`client`]: the TURN client (allocate, permissions, channels, send/receive).
//! - [`auth`]: long-term and time-limited credentials, nonces, the 401 rate limiter.
//! - [`peer_policy`]: which peers a relay may reach (IANA special-purpose registries).
//! - [`channel`]: ChannelData framing.
//! - [`ports`]: relayed port bookkeeping (EVEN-PORT, RESERVATION-TOKEN).
//!
//! Both cores are sans-IO: `relayd` drives the server over UDP, TCP and TLS sockets, and the
//! call driver drives the client over the call's socket, but neither core needs a socket.
//!
//! # Example: a client allocates on the relay core and reaches a peer, in memory
//!
//! ```
//! use std::net::{IpAddr, SocketAddr};
//! use std::time::Instant;
//! use voxmesh::turn::{
//!     AllocId, ClientAction, ClientAddr, Credentials, PeerAction, PeerPolicy, Transport,
//!     TurnClient, TurnClientConfig, TurnConfig, TurnEvent, TurnServer, parse_allow_peer,
//! };
//!
//! /// Carries the client's messages to the server and its answers back; returns what the
//! /// relay sent on to peers, from which allocation.
//! fn pump(
//!     now: Instant,
//!     me: ClientAddr,
//!     client: &mut TurnClient,
//!     server: &mut TurnServer,
//! ) -> Vec<(AllocId, SocketAddr, Vec<u8>)> {
//!     let (mut out, mut to_peers) = (Vec::new(), Vec::new());
//!     while let Some(t) = client.poll_transmit() {
//!         let mut action = server.handle_client(now, me, &t.data, &mut out);
//!         // A real driver binds the allocation's UDP socket here, then reports the outcome.
//!         while let ClientAction::Bind { pending, .. } = action {
//!             action = server.relay_bound(now, pending, Ok(()), &mut out);
//!         }
//!         match action {
//!             ClientAction::ToClient { len, .. } => {
//!                 let _ = client.handle_input(now, &out[..len]);
//!             }
//!             ClientAction::ToPeer { id, peer, data } => {
//!                 to_peers.push((id, peer, t.data[data].to_vec()))
//!             }
//!             _ => {}
//!         }
//!     }
//!     to_peers
//! }
//!
//! let relay_ip: IpAddr = "192.0.2.1".parse().unwrap();
//! let server_addr = SocketAddr::new(relay_ip, 3478);
//! let peer: SocketAddr = "198.51.100.7:5004".parse().unwrap();
//! let mut creds = Credentials::new("example.org");
//! creds.add_user("alice", "correct horse");
//! let config = TurnConfig {
//!     relay_ips: vec![relay_ip],
//!     // Documentation addresses are refused as peers, like private ones, unless opened.
//!     policy: PeerPolicy {
//!         allow: vec![parse_allow_peer("198.51.100.0/24").unwrap()],
//!         own: vec![],
//!     },
//!     ..TurnConfig::default()
//! };
//! let now = Instant::now();
//! let mut server = TurnServer::new(config, creds, now, 1_800_000_000, [7; 32]);
//! let me = ClientAddr {
//!     transport: Transport::Udp,
//!     remote: "203.0.113.5:40000".parse().unwrap(),
//!     local: server_addr,
//!     conn: 0,
//! };
//! let mut client = TurnClient::new(TurnClientConfig::new(server_addr, "alice", "correct horse"));
//!
//! // Allocate: a 401 teaches the client the realm and nonce, the retry succeeds.
//! client.allocate(now);
//! pump(now, me, &mut client, &mut server);
//! let Some(TurnEvent::Allocated { relayed, .. }) = client.poll_event() else {
//!     panic!("no allocation")
//! };
//! assert_eq!(relayed.ip(), relay_ip);
//!
//! // Without a permission the relay drops data; with one it forwards it.
//! client.create_permission(now, peer);
//! pump(now, me, &mut client, &mut server);
//! assert_eq!(client.poll_event(), Some(TurnEvent::PermissionCreated(peer.ip())));
//! client.send_to(peer, b"hello").unwrap();
//! let sent = pump(now, me, &mut client, &mut server);
//! assert_eq!(sent.len(), 1);
//! let (id, to, payload) = &sent[0];
//! assert_eq!((*to, payload.as_slice()), (peer, &b"hello"[..]));
//!
//! // The peer answers the relayed address; the relay wraps it for the client.
//! let mut out = Vec::new();
//! let PeerAction::ToClient { len, .. } = server.handle_peer(now, *id, peer, b"hi", &mut out)
//! else {
//!     panic!("dropped")
//! };
//! let got = client.handle_input(now, &out[..len]).expect("data from the peer");
//! assert_eq!((got.peer, &out[..len][got.data]), (peer, &b"hi"[..]));
//! ```

pub mod auth;
pub mod channel;
pub mod client;
pub mod peer_policy;
pub mod ports;
pub mod server;

pub use auth::{Credentials, mint_rest_credential, rest_password};
pub use client::{Op, Received, SendError, TurnClient, TurnClientConfig, TurnEvent};
pub use peer_policy::{AllowPeerError, IpNet, PeerPolicy, Refusal, parse_allow_peer};
pub use server::{
    AllocId, ClientAction, ClientAddr, Event, PeerAction, Transport, TurnConfig, TurnCounters,
    TurnServer,
};
