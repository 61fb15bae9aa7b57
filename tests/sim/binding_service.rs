//! The sans-IO STUN binding service (`BindingService::handle`), branch by branch: what it answers,
//! from which of its four sockets, to where, with which attributes, and what it counts.

use crate::support::stun as stun_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use voxmesh::cli::supernoded::software;
use voxmesh::stun::{
    ChangeRequest, Class, IntegrityCheck, MAGIC_COOKIE, Message, MessageBuilder, TransactionId,
    attr, method,
};
use voxmesh::supernode::{BindingConfig, BindingCounters, BindingService, Reply, Via};

const PRIMARY: &str = "192.0.2.1:3478";
const ALTERNATE: &str = "192.0.2.2:3479";
const CLIENT: &str = "203.0.113.7:40000";
const CLIENT6: &str = "[2001:db8:77::9]:40000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config(alternate: bool, rfc5780: bool, software: Option<String>) -> BindingConfig {
    BindingConfig {
        primary: addr(PRIMARY),
        alternate: alternate.then(|| addr(ALTERNATE)),
        rfc5780,
        software,
    }
}

fn service(c: BindingConfig) -> BindingService {
    BindingService::new(c, Arc::new(BindingCounters::default()))
}

/// The usual RFC 5780 server: two addresses, default SOFTWARE.
fn rfc5780_service() -> BindingService {
    service(config(true, true, Some(software())))
}

/// Every counter, in a fixed order, for exact comparisons.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Counts {
    requests: u64,
    rfc3489: u64,
    change_ip: u64,
    change_port: u64,
    response_port: u64,
    padding: u64,
    indications: u64,
    e400: u64,
    e420: u64,
    not_stun: u64,
    malformed: u64,
    bad_fingerprint: u64,
    not_request: u64,
    send_failed: u64,
}

fn counts(s: &BindingService) -> Counts {
    let c = s.counters();
    Counts {
        requests: c.requests.load(Relaxed),
        rfc3489: c.requests_rfc3489.load(Relaxed),
        change_ip: c.change_ip.load(Relaxed),
        change_port: c.change_port.load(Relaxed),
        response_port: c.response_port.load(Relaxed),
        padding: c.padding.load(Relaxed),
        indications: c.indications.load(Relaxed),
        e400: c.errors_400.load(Relaxed),
        e420: c.errors_420.load(Relaxed),
        not_stun: c.drop_not_stun.load(Relaxed),
        malformed: c.drop_malformed.load(Relaxed),
        bad_fingerprint: c.drop_bad_fingerprint.load(Relaxed),
        not_request: c.drop_not_request.load(Relaxed),
        send_failed: c.drop_send_failed.load(Relaxed),
    }
}

const TXID: TransactionId = TransactionId([0x42; 12]);
/// An RFC 3489 transaction ID: 16 bytes, the first four of which are not the magic cookie.
const CLASSIC_ID: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

/// An RFC 8489 message of `class` and `method_`, filled by `f`, with FINGERPRINT.
fn msg(method_: u16, class: Class, f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method_, class, TXID);
    f(&mut b);
    let len = b.fingerprint();
    buf.truncate(len);
    buf
}

/// A Binding request filled by `f`, with FINGERPRINT.
fn request(f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    msg(method::BINDING, Class::Request, f)
}

/// An RFC 3489 Binding request (no cookie, no FINGERPRINT) filled by `f`.
fn classic_request(f: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = MessageBuilder::with_raw_id(&mut buf, method::BINDING, Class::Request, CLASSIC_ID);
    f(&mut b);
    let len = b.finish();
    buf.truncate(len);
    buf
}

/// Runs one datagram; returns the reply and its bytes.
fn handle(
    s: &BindingService,
    via: Via,
    from: SocketAddr,
    packet: &[u8],
) -> Option<(Reply, Vec<u8>)> {
    let mut out = Vec::new();
    let reply = s.handle(via, from, packet, &mut out)?;
    assert_eq!(
        reply.len,
        out.len(),
        "the reply is exactly the bytes written"
    );
    Some((reply, out))
}

/// Attribute types of a message, in order.
fn types(m: &Message<'_>) -> Vec<u16> {
    m.attributes().map(|a| a.typ).collect()
}

/// Checks an error reply: code, reason, UNKNOWN-ATTRIBUTES, ID echoed, FINGERPRINT for 8489.
fn assert_error(bytes: &[u8], req: &[u8], code: u16, reason: &str, unknown: &[u16]) {
    let m = Message::parse(bytes).expect("error replies parse");
    let r = Message::parse(req).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert_eq!(m.method(), r.method());
    assert_eq!(m.raw_id(), r.raw_id());
    assert_eq!(m.error_code(), Some((code, reason)));
    let listed: Vec<u16> = m
        .get(attr::UNKNOWN_ATTRIBUTES)
        .map(|a| {
            a.value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed, unknown);
    let fp = if r.is_rfc3489() {
        IntegrityCheck::Absent
    } else {
        IntegrityCheck::Valid
    };
    assert_eq!(m.check_fingerprint(), fp);
}

fn sw_len() -> usize {
    4 + software().len().div_ceil(4) * 4
}

#[test]
fn plain_rfc8489_request_gets_every_attribute_right() {
    let s = rfc5780_service();
    let req = request(|_| {});
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).expect("answered");
    assert_eq!(reply.via, Via::PRIMARY);
    assert_eq!(reply.to, addr(CLIENT));
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.transaction_id(), TXID);
    assert!(!m.is_rfc3489());
    assert_eq!(
        types(&m),
        [
            attr::XOR_MAPPED_ADDRESS,
            attr::RESPONSE_ORIGIN,
            attr::OTHER_ADDRESS,
            attr::SOFTWARE,
            attr::FINGERPRINT
        ]
    );
    assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
    assert_eq!(m.address(attr::RESPONSE_ORIGIN), Some(addr(PRIMARY)));
    assert_eq!(m.address(attr::OTHER_ADDRESS), Some(addr(ALTERNATE)));
    assert_eq!(m.text(attr::SOFTWARE), Some(software().as_str()));
    assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    // The documented sizes: 68 bytes plain (RFC 5780 off), 24 more with RFC 5780.
    assert_eq!(out.len(), 68 + 24);
    assert_eq!(
        counts(&s),
        Counts {
            requests: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn documented_response_sizes_hold() {
    // Module docs: 68 bytes for a plain IPv4 response with SOFTWARE, 40 without, 24 more with
    // RFC 5780 (RESPONSE-ORIGIN + OTHER-ADDRESS).
    let req = request(|_| {});
    for (rfc5780, sw, want) in [
        (false, true, 68),
        (false, false, 40),
        (true, true, 92),
        (true, false, 64),
    ] {
        let s = service(config(true, rfc5780, sw.then(software)));
        let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
        assert_eq!(out.len(), want, "rfc5780={rfc5780} software={sw}");
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.get(attr::SOFTWARE).is_some(), sw);
        assert_eq!(m.get(attr::OTHER_ADDRESS).is_some(), rfc5780);
        assert_eq!(m.get(attr::RESPONSE_ORIGIN).is_some(), rfc5780);
        assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
        assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    }
}

#[test]
fn the_worst_amplification_is_exactly_the_documented_bound() {
    // Docs: at most 80 bytes plus the SOFTWARE attribute, reached by a minimal request from an
    // IPv6 client with RFC 5780 on.
    let s = service(BindingConfig {
        primary: addr("[2001:db8::1]:3478"),
        alternate: Some(addr("[2001:db8::2]:3479")),
        rfc5780: true,
        software: Some(software()),
    });
    let req = request(|_| {}); // 28 bytes: header + FINGERPRINT
    let mut minimal = req[..20].to_vec();
    minimal[3] = 0; // 20 bytes, no attributes
    for r in [&req, &minimal] {
        let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT6), r).unwrap();
        assert_eq!(out.len(), 20 + 3 * 24 + sw_len() + 8);
        assert!(out.len() <= r.len() + 80 + sw_len());
    }
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT6), &minimal).unwrap();
    assert_eq!(
        out.len(),
        minimal.len() + 80 + sw_len(),
        "the bound is reached"
    );
}

#[test]
fn software_off_leaves_it_out() {
    let s = service(config(true, true, None));
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &request(|_| {})).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.get(attr::SOFTWARE), None);
    assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
    assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
}

#[test]
fn ipv6_clients_get_ipv6_addresses() {
    let s = service(BindingConfig {
        primary: addr("[2001:db8::1]:3478"),
        alternate: Some(addr("[2001:db8::2]:3479")),
        rfc5780: true,
        software: None,
    });
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT6), &request(|_| {})).unwrap();
    assert_eq!(reply.to, addr(CLIENT6));
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT6)));
    assert_eq!(
        m.address(attr::RESPONSE_ORIGIN),
        Some(addr("[2001:db8::1]:3478"))
    );
    assert_eq!(
        m.address(attr::OTHER_ADDRESS),
        Some(addr("[2001:db8::2]:3479"))
    );
}

#[test]
fn change_request_chooses_the_socket_from_every_socket() {
    // RFC 5780 §6.1: change IP and/or port relative to where the request arrived.
    let s = rfc5780_service();
    let mut expected = Counts::default();
    for via in Via::ALL {
        for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let req = request(|b| {
                b.change_request(ChangeRequest { ip, port });
            });
            let (reply, out) = handle(&s, via, addr(CLIENT), &req).unwrap();
            let want = Via {
                alt_ip: via.alt_ip ^ ip,
                alt_port: via.alt_port ^ port,
            };
            assert_eq!(
                reply.via, want,
                "arrived on {via:?}, change ip={ip} port={port}"
            );
            assert_eq!(reply.to, addr(CLIENT));
            let m = Message::parse(&out).unwrap();
            // RESPONSE-ORIGIN names the socket the response leaves from.
            let origin = m.address(attr::RESPONSE_ORIGIN).unwrap();
            assert_eq!(origin, s.config().local(want));
            let alt_ip = origin.ip() == addr(ALTERNATE).ip();
            let alt_port = origin.port() == addr(ALTERNATE).port();
            assert_eq!((alt_ip, alt_port), (want.alt_ip, want.alt_port));
            // OTHER-ADDRESS names the socket opposite the one asked (RFC 5780 §7.4).
            let opposite = Via {
                alt_ip: !via.alt_ip,
                alt_port: !via.alt_port,
            };
            assert_eq!(
                m.address(attr::OTHER_ADDRESS),
                Some(s.config().local(opposite))
            );
            assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
            expected.requests += 1;
            expected.change_ip += ip as u64;
            expected.change_port += port as u64;
        }
    }
    assert_eq!(counts(&s), expected);
}

#[test]
fn response_port_retargets_the_port_only() {
    let s = rfc5780_service();
    let req = request(|b| {
        b.response_port(5555);
    });
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(reply.to, addr("203.0.113.7:5555"));
    assert_eq!(reply.via, Via::PRIMARY);
    let m = Message::parse(&out).unwrap();
    // The mapped address is still where the request came from.
    assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
    // With CHANGE-REQUEST too: both apply.
    let req = request(|b| {
        b.change_request(ChangeRequest {
            ip: true,
            port: false,
        })
        .response_port(6666);
    });
    let (reply, _) = handle(&s, Via::PRIMARY, addr(CLIENT6), &req).unwrap();
    assert_eq!(reply.to, addr("[2001:db8:77::9]:6666"));
    assert_eq!(
        reply.via,
        Via {
            alt_ip: true,
            alt_port: false
        }
    );
    assert_eq!(
        counts(&s),
        Counts {
            requests: 2,
            response_port: 2,
            change_ip: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn malformed_rfc5780_attributes_get_400() {
    let s = rfc5780_service();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "RESPONSE-PORT 0",
            request(|b| {
                b.response_port(0);
            }),
            "Malformed RESPONSE-PORT",
        ),
        (
            "RESPONSE-PORT of 2 bytes",
            request(|b| {
                b.attr(attr::RESPONSE_PORT, &[0x12, 0x34]);
            }),
            "Malformed RESPONSE-PORT",
        ),
        (
            "CHANGE-REQUEST of 8 bytes",
            request(|b| {
                b.attr(attr::CHANGE_REQUEST, &[0, 0, 0, 0, 0, 0, 0, 0]);
            }),
            "Malformed CHANGE-REQUEST",
        ),
        (
            "PADDING with RESPONSE-PORT",
            request(|b| {
                b.response_port(5555).attr(attr::PADDING, &[0; 64]);
            }),
            "PADDING with RESPONSE-PORT",
        ),
    ];
    for (name, req, reason) in &cases {
        let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), req).expect(name);
        assert_eq!(reply.to, addr(CLIENT), "{name}: errors go to the source");
        assert_eq!(reply.via, Via::PRIMARY, "{name}");
        assert_error(&out, req, 400, reason, &[]);
    }
    assert_eq!(
        counts(&s),
        Counts {
            e400: 4,
            ..Counts::default()
        }
    );
}

#[test]
fn padding_is_echoed_up_to_the_request_size_and_never_beyond() {
    for (cfg, from) in [
        (config(true, true, Some(software())), addr(CLIENT)),
        (config(false, true, None), addr(CLIENT)),
        (
            BindingConfig {
                primary: addr("[2001:db8::1]:3478"),
                alternate: Some(addr("[2001:db8::2]:3479")),
                rfc5780: true,
                software: Some(software()),
            },
            addr(CLIENT6),
        ),
    ] {
        let s = service(cfg);
        let plain = handle(&s, Via::PRIMARY, from, &request(|_| {})).unwrap().1;
        for pad in (0..=1400).step_by(1).filter(|p| p % 7 == 0 || *p < 200) {
            let req = request(|b| {
                b.attr_with(attr::PADDING, pad, |v| v.fill(0xab));
            });
            let (reply, out) = handle(&s, Via::PRIMARY, from, &req).unwrap();
            assert_eq!(reply.to, from);
            let m = Message::parse(&out).unwrap();
            assert_eq!(m.class(), Class::Success);
            assert_eq!(m.check_fingerprint(), IntegrityCheck::Valid);
            assert_eq!(m.xor_mapped_address(), Some(from));
            let unpadded = plain.len();
            match m.get(attr::PADDING) {
                Some(p) => {
                    // Padded to the request's size, rounded down to 4, never past it.
                    assert!(
                        out.len() <= req.len(),
                        "pad {pad}: {} > {}",
                        out.len(),
                        req.len()
                    );
                    assert!(req.len() - out.len() < 4, "pad {pad}");
                    assert_eq!(out.len(), unpadded + 4 + p.value.len());
                    assert!(p.value.iter().all(|b| *b == 0));
                    assert_eq!(
                        m.fingerprint_offset(),
                        Some(out.len() - 8),
                        "FINGERPRINT last"
                    );
                }
                None => {
                    // No room: the plain response, not a byte more.
                    assert!(req.len() < unpadded + 8, "pad {pad}: room was left");
                    assert_eq!(out.len(), unpadded, "pad {pad}");
                }
            }
        }
    }
}

#[test]
fn padding_counts_and_works_for_rfc3489_requests_too() {
    let s = rfc5780_service();
    let req = classic_request(|b| {
        b.attr(attr::PADDING, &[0; 500]);
    });
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    let m = Message::parse(&out).unwrap();
    assert!(m.get(attr::PADDING).is_some());
    assert!(out.len() <= req.len() && req.len() - out.len() < 4);
    assert_eq!(m.check_fingerprint(), IntegrityCheck::Absent);
    assert_eq!(
        counts(&s),
        Counts {
            requests: 1,
            rfc3489: 1,
            padding: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn rfc3489_request_gets_classic_attributes_only() {
    let s = rfc5780_service();
    for via in Via::ALL {
        let req = classic_request(|_| {});
        let (reply, out) = handle(&s, via, addr(CLIENT), &req).unwrap();
        assert_eq!(reply.via, via);
        assert_eq!(reply.to, addr(CLIENT));
        let m = Message::parse(&out).unwrap();
        assert!(m.is_rfc3489());
        assert_eq!(m.raw_id(), CLASSIC_ID, "the 128-bit ID is echoed");
        assert_eq!(m.class(), Class::Success);
        assert_eq!(
            types(&m),
            [
                attr::MAPPED_ADDRESS,
                attr::SOURCE_ADDRESS,
                attr::CHANGED_ADDRESS
            ],
            "no XOR-MAPPED-ADDRESS, SOFTWARE or FINGERPRINT for a classic client"
        );
        assert_eq!(m.address(attr::MAPPED_ADDRESS), Some(addr(CLIENT)));
        assert_eq!(m.reflexive_address(), Some(addr(CLIENT)));
        assert_eq!(m.address(attr::SOURCE_ADDRESS), Some(s.config().local(via)));
        assert_eq!(m.response_origin(), Some(s.config().local(via)));
        let opposite = Via {
            alt_ip: !via.alt_ip,
            alt_port: !via.alt_port,
        };
        assert_eq!(
            m.address(attr::CHANGED_ADDRESS),
            Some(s.config().local(opposite))
        );
        assert_eq!(m.other_address(), Some(s.config().local(opposite)));
    }
    // RFC 3489's CHANGE-REQUEST (what `stun` from stun-client sends) works the same way.
    let req = classic_request(|b| {
        b.change_request(ChangeRequest {
            ip: true,
            port: true,
        });
    });
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    let both = Via {
        alt_ip: true,
        alt_port: true,
    };
    assert_eq!(reply.via, both);
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.address(attr::SOURCE_ADDRESS), Some(addr(ALTERNATE)));
    assert_eq!(
        counts(&s),
        Counts {
            requests: 5,
            rfc3489: 5,
            change_ip: 1,
            change_port: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn rfc3489_response_address_is_refused_with_420() {
    let s = rfc5780_service();
    let req = classic_request(|b| {
        b.address(attr::RESPONSE_ADDRESS, addr("198.51.100.99:53"));
    });
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(reply.to, addr(CLIENT), "never to the RESPONSE-ADDRESS");
    assert_error(
        &out,
        &req,
        420,
        "Unknown attribute",
        &[attr::RESPONSE_ADDRESS],
    );
    // RFC 8489 clients do not get it honoured either.
    let req = request(|b| {
        b.address(attr::RESPONSE_ADDRESS, addr("198.51.100.99:53"));
    });
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(reply.to, addr(CLIENT));
    assert_error(
        &out,
        &req,
        420,
        "Unknown attribute",
        &[attr::RESPONSE_ADDRESS],
    );
    assert_eq!(
        counts(&s),
        Counts {
            e420: 2,
            ..Counts::default()
        }
    );
}

#[test]
fn unknown_comprehension_required_attributes_get_420_listing_each_once() {
    let s = rfc5780_service();
    let req = request(|b| {
        b.u32_attr(0x7777, 1)
            .u32_attr(0x0030, 2)
            .u32_attr(0x7777, 3)
            .u32_attr(0x8fff, 4) // comprehension-optional: ignored
            .attr(attr::PRIORITY, &[0, 0, 0, 1]); // known
    });
    let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(reply.to, addr(CLIENT));
    assert_error(&out, &req, 420, "Unknown attribute", &[0x7777, 0x0030]);

    // Comprehension-optional unknowns alone are fine.
    let req = request(|b| {
        b.u32_attr(0x8fff, 4).u32_attr(0xc001, 5);
    });
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(Message::parse(&out).unwrap().class(), Class::Success);

    // Attributes after MESSAGE-INTEGRITY are ignored (RFC 8489 §14.5), unknown or not.
    let req = request(|b| {
        b.message_integrity(b"pw").u32_attr(0x7777, 1);
    });
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(Message::parse(&out).unwrap().class(), Class::Success);
    assert_eq!(
        counts(&s),
        Counts {
            requests: 2,
            e420: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn rfc5780_off_refuses_its_attributes_and_omits_its_addresses() {
    let s = service(config(true, false, Some(software())));
    for (typ, req) in [
        (
            attr::CHANGE_REQUEST,
            request(|b| {
                b.change_request(ChangeRequest {
                    ip: true,
                    port: false,
                });
            }),
        ),
        (
            attr::RESPONSE_PORT,
            request(|b| {
                b.response_port(5555);
            }),
        ),
        (
            attr::PADDING,
            request(|b| {
                b.attr(attr::PADDING, &[0; 100]);
            }),
        ),
    ] {
        let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
        assert_eq!(reply.to, addr(CLIENT));
        assert_eq!(reply.via, Via::PRIMARY);
        assert_error(&out, &req, 420, "Unknown attribute", &[typ]);
    }
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &request(|_| {})).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(
        types(&m),
        [attr::XOR_MAPPED_ADDRESS, attr::SOFTWARE, attr::FINGERPRINT]
    );
    // Classic clients: no CHANGED-ADDRESS either.
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &classic_request(|_| {})).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(types(&m), [attr::MAPPED_ADDRESS, attr::SOURCE_ADDRESS]);
    assert_eq!(
        counts(&s),
        Counts {
            requests: 2,
            rfc3489: 1,
            e420: 3,
            ..Counts::default()
        }
    );
}

#[test]
fn change_request_without_an_alternate_gets_420() {
    let s = service(config(false, true, Some(software())));
    for (ip, port) in [(true, false), (false, true), (true, true)] {
        let req = request(|b| {
            b.change_request(ChangeRequest { ip, port });
        });
        let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
        assert_eq!(reply.via, Via::PRIMARY);
        assert_error(
            &out,
            &req,
            420,
            "No alternate address",
            &[attr::CHANGE_REQUEST],
        );
    }
    // Asking for no change is fine, and the answer has no OTHER-ADDRESS.
    let req = request(|b| {
        b.change_request(ChangeRequest::default());
    });
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(m.class(), Class::Success);
    assert_eq!(m.address(attr::OTHER_ADDRESS), None);
    assert_eq!(m.address(attr::RESPONSE_ORIGIN), Some(addr(PRIMARY)));
    // RESPONSE-PORT and PADDING need no alternate.
    let req = request(|b| {
        b.response_port(7000);
    });
    let (reply, _) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
    assert_eq!(reply.to, addr("203.0.113.7:7000"));
    assert_eq!(
        counts(&s),
        Counts {
            requests: 2,
            response_port: 1,
            e420: 3,
            ..Counts::default()
        }
    );
}

#[test]
fn wildcard_primary_omits_origin_addresses() {
    let s = service(BindingConfig {
        primary: addr("0.0.0.0:3478"),
        alternate: None,
        rfc5780: true,
        software: None,
    });
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &request(|_| {})).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(types(&m), [attr::XOR_MAPPED_ADDRESS, attr::FINGERPRINT]);
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &classic_request(|_| {})).unwrap();
    let m = Message::parse(&out).unwrap();
    assert_eq!(types(&m), [attr::MAPPED_ADDRESS]);
}

#[test]
fn indications_are_counted_and_unanswered() {
    let s = rfc5780_service();
    let ind = msg(method::BINDING, Class::Indication, |_| {});
    for _ in 0..3 {
        assert!(handle(&s, Via::PRIMARY, addr(CLIENT), &ind).is_none());
    }
    // A Send indication (TURN) is not ours to count as a keepalive.
    let send = msg(method::SEND, Class::Indication, |_| {});
    assert!(handle(&s, Via::PRIMARY, addr(CLIENT), &send).is_none());
    assert_eq!(
        counts(&s),
        Counts {
            indications: 3,
            not_request: 1,
            ..Counts::default()
        }
    );
}

#[test]
fn responses_are_dropped() {
    let s = rfc5780_service();
    for class in [Class::Success, Class::Error] {
        let m = msg(method::BINDING, class, |b| {
            b.xor_address(attr::XOR_MAPPED_ADDRESS, addr(CLIENT));
        });
        assert!(handle(&s, Via::PRIMARY, addr(CLIENT), &m).is_none());
    }
    // Our own replies fed back (a reflection loop between two servers) die here.
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &request(|_| {})).unwrap();
    assert!(handle(&s, Via::PRIMARY, addr(CLIENT), &out).is_none());
    assert_eq!(
        counts(&s),
        Counts {
            requests: 1,
            not_request: 3,
            ..Counts::default()
        }
    );
}

#[test]
fn bad_fingerprint_is_dropped() {
    let s = rfc5780_service();
    let mut req = request(|_| {});
    let n = req.len();
    req[n - 1] ^= 1;
    assert!(handle(&s, Via::PRIMARY, addr(CLIENT), &req).is_none());
    // A FINGERPRINT of the wrong length is no better.
    let mut buf = Vec::new();
    let mut b = MessageBuilder::new(&mut buf, method::BINDING, Class::Request, TXID);
    b.attr(attr::FINGERPRINT, &[0; 8]);
    let len = b.finish();
    assert!(handle(&s, Via::PRIMARY, addr(CLIENT), &buf[..len]).is_none());
    assert_eq!(
        counts(&s),
        Counts {
            bad_fingerprint: 2,
            ..Counts::default()
        }
    );
}

#[test]
fn non_binding_requests_get_400() {
    let s = rfc5780_service();
    for m in [method::ALLOCATE, method::REFRESH, 0x0fff] {
        let req = msg(m, Class::Request, |b| {
            b.u32_attr(attr::REQUESTED_TRANSPORT, 17 << 24);
        });
        let (reply, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &req).unwrap();
        assert_eq!(reply.to, addr(CLIENT));
        assert_error(&out, &req, 400, "Unsupported method", &[]);
        assert_eq!(Message::parse(&out).unwrap().method(), m);
    }
    assert_eq!(
        counts(&s),
        Counts {
            e400: 3,
            ..Counts::default()
        }
    );
}

#[test]
fn not_stun_and_malformed_are_dropped_by_reason() {
    let s = rfc5780_service();
    let good = request(|_| {});
    let rtp = [0x80u8; 40];
    let mut long_len = good.clone();
    long_len[3] += 4;
    let mut unaligned = good.clone();
    unaligned[3] += 1;
    let mut truncated_attr = good.clone();
    truncated_attr[23] = 0x40; // FINGERPRINT claims 64 bytes
    let cases: [(&[u8], &str); 6] = [
        (&[], "not_stun"),
        (&good[..19], "not_stun"),
        (&rtp, "not_stun"),
        (&long_len, "malformed"),
        (&unaligned, "malformed"),
        (&truncated_attr, "malformed"),
    ];
    for (p, _) in cases {
        assert!(handle(&s, Via::PRIMARY, addr(CLIENT), p).is_none());
    }
    assert_eq!(
        counts(&s),
        Counts {
            not_stun: 3,
            malformed: 3,
            ..Counts::default()
        }
    );
}

#[test]
fn rfc5769_sample_requests_are_answered() {
    // ICE-style requests (PRIORITY, ICE-CONTROLLED, USERNAME, MESSAGE-INTEGRITY) and long-term
    // authenticated ones (RFC 8489 B.1 carries USERHASH and PASSWORD-ALGORITHM, both
    // comprehension-required): Binding needs no authentication, so all just get their address.
    let s = rfc5780_service();
    for req in [
        stun_support::RFC5769_REQUEST,
        stun_support::RFC5769_LONG_TERM_REQUEST,
        &stun_support::rfc8489_b1_erratum_6268()[..],
    ] {
        let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), req).unwrap();
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.raw_id(), Message::parse(req).unwrap().raw_id());
        assert_eq!(m.xor_mapped_address(), Some(addr(CLIENT)));
    }
}

#[test]
fn counters_add_up_and_render_as_prometheus_text() {
    let s = rfc5780_service();
    let script: Vec<Vec<u8>> = vec![
        request(|_| {}),
        request(|b| {
            b.change_request(ChangeRequest {
                ip: true,
                port: true,
            });
        }),
        request(|b| {
            b.response_port(1234);
        }),
        request(|b| {
            b.attr(attr::PADDING, &[0; 200]);
        }),
        classic_request(|_| {}),
        msg(method::BINDING, Class::Indication, |_| {}),
        msg(method::BINDING, Class::Success, |_| {}),
        msg(method::ALLOCATE, Class::Request, |_| {}),
        request(|b| {
            b.u32_attr(0x7001, 0);
        }),
        vec![0xff; 30],
        vec![0; 21],
    ];
    let mut answered = 0;
    for p in &script {
        answered += handle(&s, Via::PRIMARY, addr(CLIENT), p).is_some() as u64;
    }
    let c = counts(&s);
    assert_eq!(
        c,
        Counts {
            requests: 5,
            rfc3489: 1,
            change_ip: 1,
            change_port: 1,
            response_port: 1,
            padding: 1,
            indications: 1,
            e400: 1,
            e420: 1,
            not_stun: 1,
            malformed: 1,
            not_request: 1,
            ..Counts::default()
        }
    );
    assert_eq!(answered, c.requests + c.e400 + c.e420);
    let unanswered = c.indications + c.not_stun + c.malformed + c.bad_fingerprint + c.not_request;
    assert_eq!(answered + unanswered, script.len() as u64);

    let mut text = String::new();
    s.counters().render(&mut text);
    for line in [
        // Five answered, one of them RFC 3489: the version labels split them.
        "voxmesh_stun_requests_total{kind=\"rfc8489\"} 4",
        "voxmesh_stun_requests_total{kind=\"rfc3489\"} 1",
        "voxmesh_stun_requests_total{kind=\"change_ip\"} 1",
        "voxmesh_stun_requests_total{kind=\"padding\"} 1",
        "voxmesh_stun_indications_total 1",
        "voxmesh_stun_errors_total{code=\"400\"} 1",
        "voxmesh_stun_errors_total{code=\"420\"} 1",
        "voxmesh_stun_dropped_total{reason=\"not_stun\"} 1",
        "voxmesh_stun_dropped_total{reason=\"malformed\"} 1",
        "voxmesh_stun_dropped_total{reason=\"not_request\"} 1",
        "voxmesh_stun_dropped_total{reason=\"bad_fingerprint\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[test]
fn the_cookie_decides_rfc3489_not_the_id() {
    // A request whose ID happens to start with the cookie is RFC 8489; one bit off is classic.
    let s = rfc5780_service();
    let mut id = CLASSIC_ID;
    id[..4].copy_from_slice(&(MAGIC_COOKIE ^ 1).to_be_bytes());
    let mut buf = Vec::new();
    let len = MessageBuilder::with_raw_id(&mut buf, method::BINDING, Class::Request, id).finish();
    let (_, out) = handle(&s, Via::PRIMARY, addr(CLIENT), &buf[..len]).unwrap();
    let m = Message::parse(&out).unwrap();
    assert!(m.is_rfc3489());
    assert_eq!(m.raw_id(), id);
    assert_eq!(m.get(attr::XOR_MAPPED_ADDRESS), None);
}
