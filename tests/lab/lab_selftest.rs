//! The lab checks itself with plain sockets, independent of natprobe, so the lab and natprobe
//! can never be wrong together.
//!
//! Absence is proven without timeouts where possible: a packet that should be filtered is sent
//! just before a marker that must pass along the same path (links, bridges and NATs here keep
//! FIFO order), so when the marker arrives, the filtered packet would already have.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use voxlab::{BoxOpts, FilterState, Lab, LabNat};

const LIFETIME: u32 = 3;
const WAIT: Duration = Duration::from_secs(3);

struct Servers {
    a1p1: UdpSocket,
    a1p2: UdpSocket,
    a2p1: UdpSocket,
    a2p2: UdpSocket,
}

fn servers(lab: &Lab, v6: bool) -> Servers {
    let ns = lab.server_ns();
    let (a1, a2) = if v6 {
        ("[2001:db8::1]", "[2001:db8::2]")
    } else {
        ("198.51.100.1", "198.51.100.2")
    };
    let bind = |ip: &str, port: u16| {
        let s = lab
            .udp_socket(&ns, format!("{ip}:{port}").parse().unwrap())
            .unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    };
    Servers {
        a1p1: bind(a1, 4000),
        a1p2: bind(a1, 4001),
        a2p1: bind(a2, 4000),
        a2p2: bind(a2, 4001),
    }
}

fn client(lab: &Lab, ns: &str, v6: bool) -> UdpSocket {
    let any: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
    let s = lab.udp_socket(ns, any).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// Sends `msg` from `from` to `to` and returns the source address the receiver saw.
fn send_seen(from: &UdpSocket, to: &UdpSocket, msg: &[u8]) -> SocketAddr {
    from.send_to(msg, to.local_addr().unwrap()).unwrap();
    recv_expect(to, msg)
}

fn recv_expect(sock: &UdpSocket, msg: &[u8]) -> SocketAddr {
    let mut buf = [0u8; 64];
    let (n, src) = sock.recv_from(&mut buf).expect("datagram expected");
    assert_eq!(&buf[..n], msg, "unexpected datagram");
    src
}

/// Sends `probe` then `marker` (from `marker_from`) to `dst`, and reports whether `probe`
/// arrived at `rx` before the marker.
fn passes(
    probe_from: &UdpSocket,
    marker_from: &UdpSocket,
    dst: SocketAddr,
    rx: &UdpSocket,
) -> bool {
    probe_from.send_to(b"probe", dst).unwrap();
    marker_from.send_to(b"marker", dst).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = rx.recv_from(&mut buf).expect("the marker must arrive");
    if &buf[..n] == b"probe" {
        let _ = recv_expect(rx, b"marker");
        true
    } else {
        assert_eq!(&buf[..n], b"marker");
        false
    }
}

#[derive(Clone, Copy, Debug)]
struct Expect {
    translated: bool,
    eim: bool,
    eif: bool,
    adf_or_open: bool,
    hairpin: bool,
    per_box: bool,
}

fn check(nat: LabNat, opts: BoxOpts, want: Expect) {
    if !Lab::ready_or_skip("lab_selftest") {
        return;
    }
    let (lab, info) = Lab::with_box(&opts).unwrap();
    let host = &info.hosts[0].ns;
    let s = servers(&lab, false);
    let c = client(&lab, host, false);

    // Mapping toward A1:p1; nothing has touched A2 yet.
    let m1 = send_seen(&c, &s.a1p1, b"m1");
    let local = c.local_addr().unwrap();
    assert_eq!(
        m1.ip().to_string() != info.hosts[0].ip4,
        want.translated,
        "{nat:?} translation"
    );
    if !want.translated {
        assert_eq!(m1.port(), local.port());
    }

    // Filtering, before any packet goes to A2 (per-box state would otherwise open it).
    assert_eq!(passes(&s.a2p2, &s.a1p1, m1, &c), want.eif, "{nat:?} EIF");
    assert_eq!(
        passes(&s.a1p2, &s.a1p1, m1, &c),
        want.adf_or_open,
        "{nat:?} port-changed filter"
    );

    // Hairpinning: a second socket on the same host sends to our mapped address, then pings
    // the server, whose answer to `c` must come after any hairpinned packet.
    let d = client(&lab, host, false);
    d.send_to(b"probe", m1).unwrap();
    d.send_to(b"ping", s.a1p1.local_addr().unwrap()).unwrap();
    recv_expect(&s.a1p1, b"ping");
    s.a1p1.send_to(b"marker", m1).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).unwrap();
    let hairpinned = &buf[..n] == b"probe";
    assert_eq!(hairpinned, want.hairpin, "{nat:?} hairpinning");
    if hairpinned {
        if want.translated {
            assert_eq!(
                from.ip(),
                m1.ip(),
                "hairpinned packets carry the NAT's public address"
            );
        }
        recv_expect(&c, b"marker");
    }

    // Mapping toward the other address and port.
    let m2 = send_seen(&c, &s.a2p1, b"m2");
    let m3 = send_seen(&c, &s.a2p2, b"m3");
    assert_eq!(
        m1 == m2 && m2 == m3,
        want.eim,
        "{nat:?} EIM ({m1} {m2} {m3})"
    );
    if !want.eim {
        assert!(
            m1 != m2 && m2 != m3 && m1 != m3,
            "symmetric: a new mapping per destination"
        );
    }

    // Per-box or per-mapping address filter state: a fresh mapping that has only talked to A1.
    if nat == LabNat::RestrictedCone {
        let e = client(&lab, host, false);
        let me = send_seen(&e, &s.a1p1, b"e");
        assert_eq!(
            passes(&s.a2p2, &s.a1p1, me, &e),
            want.per_box,
            "{nat:?} filter state"
        );
    }

    // Binding lifetime: a binding idle for LIFETIME - 1 s still passes, one idle for
    // LIFETIME + 1 s does not. (Each binding is probed once: inbound packets refresh it too.)
    if want.translated {
        let early = client(&lab, host, false);
        let late = client(&lab, host, false);
        let me = send_seen(&early, &s.a1p1, b"e");
        let ml = send_seen(&late, &s.a1p1, b"l");
        std::thread::sleep(Duration::from_millis(u64::from(LIFETIME) * 1000 - 1000));
        assert!(
            passes(&s.a1p1, &s.a1p1, me, &early),
            "{nat:?}: binding died before its lifetime"
        );
        std::thread::sleep(Duration::from_millis(2000));
        let keep = client(&lab, host, false);
        let mk = send_seen(&keep, &s.a1p1, b"k");
        s.a1p1.send_to(b"probe", ml).unwrap();
        s.a1p1.send_to(b"marker", mk).unwrap();
        recv_expect(&keep, b"marker");
        late.set_nonblocking(true).unwrap();
        assert!(
            late.recv_from(&mut buf).is_err(),
            "{nat:?}: binding outlived its lifetime"
        );
    }
}

#[test]
fn none_is_public_and_open() {
    let want = Expect {
        translated: false,
        eim: true,
        eif: true,
        adf_or_open: true,
        hairpin: true,
        per_box: false,
    };
    check(LabNat::None, BoxOpts::new(LabNat::None), want);
}

#[test]
fn full_cone_with_hairpinning() {
    let want = Expect {
        translated: true,
        eim: true,
        eif: true,
        adf_or_open: true,
        hairpin: true,
        per_box: false,
    };
    check(
        LabNat::FullCone,
        BoxOpts::new(LabNat::FullCone)
            .hairpin(true)
            .lifetime(LIFETIME),
        want,
    );
}

#[test]
fn restricted_cone_per_mapping() {
    let want = Expect {
        translated: true,
        eim: true,
        eif: false,
        adf_or_open: true,
        hairpin: false,
        per_box: false,
    };
    check(
        LabNat::RestrictedCone,
        BoxOpts::new(LabNat::RestrictedCone).lifetime(LIFETIME),
        want,
    );
}

#[test]
fn restricted_cone_per_box() {
    let want = Expect {
        translated: true,
        eim: true,
        eif: false,
        adf_or_open: true,
        hairpin: false,
        per_box: true,
    };
    let opts = BoxOpts::new(LabNat::RestrictedCone)
        .lifetime(LIFETIME)
        .filter_state(FilterState::Box);
    check(LabNat::RestrictedCone, opts, want);
}

#[test]
fn port_restricted_cone() {
    let want = Expect {
        translated: true,
        eim: true,
        eif: false,
        adf_or_open: false,
        hairpin: false,
        per_box: false,
    };
    check(
        LabNat::PortRestrictedCone,
        BoxOpts::new(LabNat::PortRestrictedCone).lifetime(LIFETIME),
        want,
    );
}

#[test]
fn symmetric_with_hairpinning() {
    let want = Expect {
        translated: true,
        eim: false,
        eif: false,
        adf_or_open: false,
        hairpin: true,
        per_box: false,
    };
    check(
        LabNat::Symmetric,
        BoxOpts::new(LabNat::Symmetric)
            .hairpin(true)
            .lifetime(LIFETIME),
        want,
    );
}

#[test]
fn udp_blocked_passes_tcp_only() {
    if !Lab::ready_or_skip("udp_blocked_passes_tcp_only") {
        return;
    }
    let (lab, info) = Lab::client_behind(LabNat::UdpBlocked).unwrap();
    let s = servers(&lab, false);
    s.a1p1.set_nonblocking(true).unwrap();
    let listener = voxlab::in_netns(&lab.server_ns(), || {
        std::net::TcpListener::bind("198.51.100.1:4000")
    })
    .unwrap();
    let c = client(&lab, &info.hosts[0].ns, false);
    c.send_to(b"udp", s.a1p1.local_addr().unwrap()).unwrap();
    // The TCP connection is the marker: it travels the same links after the datagram.
    let tcp = voxlab::in_netns(&info.hosts[0].ns, || {
        std::net::TcpStream::connect_timeout(&"198.51.100.1:4000".parse().unwrap(), WAIT)
    });
    assert!(tcp.is_ok(), "TCP must pass a UDP-blocking NAT: {tcp:?}");
    listener.accept().unwrap();
    let mut buf = [0u8; 16];
    assert!(s.a1p1.recv_from(&mut buf).is_err(), "UDP must not pass");
}

#[test]
fn ipv6_is_a_stateful_firewall() {
    if !Lab::ready_or_skip("ipv6_is_a_stateful_firewall") {
        return;
    }
    let (lab, info) = Lab::client_behind(LabNat::PortRestrictedCone).unwrap();
    let s = servers(&lab, true);
    let c = client(&lab, &info.hosts[0].ns, true);
    let seen = send_seen(&c, &s.a1p1, b"m1");
    assert_eq!(
        seen.ip().to_string(),
        info.hosts[0].ip6,
        "no translation on IPv6"
    );
    assert_eq!(seen.port(), c.local_addr().unwrap().port());
    assert!(
        !passes(&s.a2p2, &s.a1p1, seen, &c),
        "unsolicited IPv6 is filtered"
    );
    assert!(!passes(&s.a1p2, &s.a1p1, seen, &c), "by address and port");
}

#[test]
fn several_hosts_share_one_nat_and_reset_forgets_state() {
    if !Lab::ready_or_skip("several_hosts_share_one_nat") {
        return;
    }
    let opts = BoxOpts::new(LabNat::FullCone).hosts(3);
    let (lab, info) = Lab::with_box(&opts).unwrap();
    assert_eq!(info.hosts.len(), 3);
    let s = servers(&lab, false);
    let mut seen = Vec::new();
    for h in &info.hosts {
        let c = client(&lab, &h.ns, false);
        let m = send_seen(&c, &s.a1p1, b"x");
        assert_eq!(
            m.ip().to_string(),
            info.wan4,
            "every host is behind the box's address"
        );
        seen.push((c, m));
    }
    // A full cone lets anyone reach each host's mapping...
    assert!(passes(&s.a2p2, &s.a1p1, seen[0].1, &seen[0].0));
    // ...until the NAT forgets everything.
    lab.reset(1).unwrap();
    let (c, m) = &seen[1];
    s.a2p2.send_to(b"probe", *m).unwrap();
    let fresh = client(&lab, &info.hosts[2].ns, false);
    let mf = send_seen(&fresh, &s.a1p1, b"f");
    s.a1p1.send_to(b"marker", mf).unwrap();
    recv_expect(&fresh, b"marker");
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        c.recv_from(&mut buf).is_err(),
        "reset must drop old mappings"
    );
}
