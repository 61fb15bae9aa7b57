//! What natprobe found: a plain record of observations, `None` wherever the evidence did not
//! decide, and the classification derived from it.

use std::net::SocketAddr;

use serde::Serialize;

/// Mapping or filtering behaviour in RFC 4787 terms (§4.1 and §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behavior {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::EndpointIndependent => "endpoint-independent",
            Behavior::AddressDependent => "address-dependent",
            Behavior::AddressAndPortDependent => "address-and-port-dependent",
        }
    }
}

/// The classic (RFC 3489-style) name, plus the two cases that name no NAT.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatKind {
    /// No translation and no filtering: a public address.
    None,
    /// No translation, but unsolicited inbound traffic is filtered (the usual IPv6 case).
    Firewall,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
    /// No server answered at all.
    UdpBlocked,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::Firewall => "firewall",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestrictedCone => "port-restricted-cone",
            NatKind::Symmetric => "symmetric",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// What this means for calls, in one line.
    pub fn advice(kind: Option<NatKind>) -> &'static str {
        match kind {
            Some(NatKind::None) => {
                "public address: direct calls work with every peer, and this host could relay for others"
            }
            Some(NatKind::Firewall) => {
                "no NAT, stateful firewall: direct calls work with most peers (both sides punch at once)"
            }
            Some(NatKind::FullCone) => "direct calls work with every peer",
            Some(NatKind::RestrictedCone) => {
                "direct calls work with most peers, symmetric NATs included"
            }
            Some(NatKind::PortRestrictedCone) => {
                "direct calls work with most peers; calls to symmetric NATs will be relayed"
            }
            Some(NatKind::Symmetric) => {
                "calls to port-restricted and symmetric NATs will be relayed; open and cone NATs connect directly"
            }
            Some(NatKind::UdpBlocked) => "UDP is blocked: calls will be relayed over TCP or TLS",
            None => "NAT type undecided: calls will try direct paths and fall back to a relay",
        }
    }
}

/// One STUN server as natprobe saw it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServerReport {
    pub address: SocketAddr,
    /// Median round trip of the answered requests; `None` if it never answered.
    pub rtt_ms: Option<f64>,
    /// Requests sent and answered, for the loss seen on this path.
    pub requests: u32,
    pub responses: u32,
    /// Whether it advertised an alternate address (RFC 5780 OTHER-ADDRESS or RFC 3489
    /// CHANGED-ADDRESS); `None` if it never answered.
    pub rfc5780: Option<bool>,
    pub other_address: Option<SocketAddr>,
    /// The reflexive address it reported for the main socket.
    pub mapped_address: Option<SocketAddr>,
}

/// The full result. Serialises to the `--json` object.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub nat: Option<NatKind>,
    pub mapping: Option<Behavior>,
    pub filtering: Option<Behavior>,
    pub mapped_address: Option<SocketAddr>,
    pub local_address: Option<SocketAddr>,
    pub port_preserved: Option<bool>,
    pub hairpinning: Option<bool>,
    /// Binding lifetime estimate (midpoint of `lifetime_range_s`), if measured.
    pub lifetime_s: Option<f64>,
    /// The last probe time the binding survived, and the time by which it was found gone: the
    /// first expired probe's time plus the few RTOs its retries took.
    pub lifetime_range_s: Option<[f64; 2]>,
    pub servers: Vec<ServerReport>,
    /// The server the RFC 5780 tests ran against.
    pub rfc5780_server: Option<SocketAddr>,
    /// Fraction of control requests to that server left unanswered.
    pub loss: Option<f64>,
    /// Properties the evidence could not decide, and why.
    pub undecided: Vec<String>,
    pub advice: &'static str,
    pub duration_ms: f64,
}

/// The facts classification works from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Some server answered.
    pub reachable: bool,
    /// The mapped address differs from the local one; `None` if unknown.
    pub translated: Option<bool>,
    pub mapping: Option<Behavior>,
    /// Mapping is known not to be endpoint-independent even if which kind is not.
    pub mapping_dependent: bool,
    pub filtering: Option<Behavior>,
}

/// The classic name from mapping and filtering (RFC 4787 §3 relates the two vocabularies).
pub fn classify(e: Evidence) -> Option<NatKind> {
    use Behavior::*;
    if !e.reachable {
        return Some(NatKind::UdpBlocked);
    }
    match e.translated? {
        false => match e.filtering? {
            EndpointIndependent => Some(NatKind::None),
            AddressDependent | AddressAndPortDependent => Some(NatKind::Firewall),
        },
        true => match e.mapping {
            Some(AddressDependent | AddressAndPortDependent) => Some(NatKind::Symmetric),
            None if e.mapping_dependent => Some(NatKind::Symmetric),
            None => None,
            Some(EndpointIndependent) => match e.filtering? {
                EndpointIndependent => Some(NatKind::FullCone),
                AddressDependent => Some(NatKind::RestrictedCone),
                AddressAndPortDependent => Some(NatKind::PortRestrictedCone),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::Behavior::*;
    use super::*;

    #[test]
    fn classification_table() {
        let e = |translated, mapping, filtering| Evidence {
            reachable: true,
            translated,
            mapping,
            mapping_dependent: false,
            filtering,
        };
        let cases: &[(&str, Evidence, Option<NatKind>)] = &[
            (
                "nothing answered",
                Evidence::default(),
                Some(NatKind::UdpBlocked),
            ),
            (
                "public",
                e(
                    Some(false),
                    Some(EndpointIndependent),
                    Some(EndpointIndependent),
                ),
                Some(NatKind::None),
            ),
            (
                "firewall apdf",
                e(
                    Some(false),
                    Some(EndpointIndependent),
                    Some(AddressAndPortDependent),
                ),
                Some(NatKind::Firewall),
            ),
            (
                "firewall adf",
                e(
                    Some(false),
                    Some(EndpointIndependent),
                    Some(AddressDependent),
                ),
                Some(NatKind::Firewall),
            ),
            (
                "untranslated, filtering unknown",
                e(Some(false), Some(EndpointIndependent), None),
                None,
            ),
            (
                "full cone",
                e(
                    Some(true),
                    Some(EndpointIndependent),
                    Some(EndpointIndependent),
                ),
                Some(NatKind::FullCone),
            ),
            (
                "restricted",
                e(
                    Some(true),
                    Some(EndpointIndependent),
                    Some(AddressDependent),
                ),
                Some(NatKind::RestrictedCone),
            ),
            (
                "port restricted",
                e(
                    Some(true),
                    Some(EndpointIndependent),
                    Some(AddressAndPortDependent),
                ),
                Some(NatKind::PortRestrictedCone),
            ),
            (
                "symmetric apdm",
                e(
                    Some(true),
                    Some(AddressAndPortDependent),
                    Some(AddressAndPortDependent),
                ),
                Some(NatKind::Symmetric),
            ),
            (
                "symmetric adm, filtering unknown",
                e(Some(true), Some(AddressDependent), None),
                Some(NatKind::Symmetric),
            ),
            (
                "eim, filtering unknown",
                e(Some(true), Some(EndpointIndependent), None),
                None,
            ),
            (
                "mapping unknown",
                e(Some(true), None, Some(AddressAndPortDependent)),
                None,
            ),
            (
                "translation unknown",
                e(None, Some(EndpointIndependent), Some(EndpointIndependent)),
                None,
            ),
        ];
        for (name, ev, want) in cases {
            assert_eq!(classify(*ev), *want, "{name}");
        }
        let dependent = Evidence {
            mapping_dependent: true,
            ..e(Some(true), None, None)
        };
        assert_eq!(
            classify(dependent),
            Some(NatKind::Symmetric),
            "known not EIM"
        );
    }

    #[test]
    fn json_names_match_the_documented_vocabulary() {
        assert_eq!(
            serde_json::to_string(&NatKind::PortRestrictedCone).unwrap(),
            "\"port-restricted-cone\""
        );
        assert_eq!(
            serde_json::to_string(&NatKind::UdpBlocked).unwrap(),
            "\"udp-blocked\""
        );
        assert_eq!(
            serde_json::to_string(&AddressAndPortDependent).unwrap(),
            "\"address-and-port-dependent\""
        );
        for k in [
            NatKind::None,
            NatKind::Firewall,
            NatKind::FullCone,
            NatKind::RestrictedCone,
            NatKind::Symmetric,
        ] {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }
}
