//! What ties a node id to a TLS certificate: the host of that node's hostfile entry must
//! be one of the certificate's subject alternative names.
//!
//! With [`PeerTls`](crate::PeerTls), rustls already refuses any peer whose certificate
//! the cluster's authority did not sign. That alone would let any node of the cluster
//! claim any other node's id; the checks here close that gap wherever the hostfile gives
//! nodes distinct hosts:
//!
//! * a caller's claimed node id is accepted only if the end-entity certificate it
//!   presented names the host of that node's address ([`CertifiedHosts::check`]);
//! * at start, a node's own certificate must chain to the configured authority and name
//!   its own host ([`check_own_certificate`]), so a misissued certificate is a config
//!   error at start rather than refusals at the first call.
//!
//! # Limits
//!
//! Nodes that share a host (one IP address, distinct ports) share the name their
//! certificates must carry, so a certificate proves the host, never the port: on one
//! host, nodes can still claim each other's ids. Names are compared as webpki compares a
//! server's name (DNS names case-insensitively, with wildcards; IP addresses exactly).
//!
//! # Invariants
//!
//! Nothing here panics on a certificate's bytes: a certificate that does not parse is a
//! refusal (or, for this node's own, an error naming the problem).
use chimaera_core::ids::NodeId;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

/// The host of `address` (`host:port`, an IPv6 host in brackets) as a certificate name.
pub(crate) fn host_name(address: &str) -> Option<ServerName<'static>> {
    let authority: http::uri::Authority = address.parse().ok()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).ok()
}

/// Every node's host, to check the certificates callers present against.
pub(crate) struct CertifiedHosts {
    /// Node `i`'s host name; `None` if its address has no usable host (then no caller
    /// can be that node).
    hosts: Vec<Option<ServerName<'static>>>,
}

impl CertifiedHosts {
    /// The hosts of `addresses`, in node-id order.
    pub(crate) fn new(addresses: &[String]) -> CertifiedHosts {
        CertifiedHosts {
            hosts: addresses.iter().map(|address| host_name(address)).collect(),
        }
    }

    /// Whether `certificates` (the caller's chain, end-entity first, as rustls verified
    /// it) names the host of `node`; else why the caller is refused.
    pub(crate) fn check(
        &self,
        node: NodeId,
        certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<(), &'static str> {
        let Some(Some(host)) = self.hosts.get(node as usize) else {
            return Err("its node id has no host a certificate could name");
        };
        let end_entity = certificates
            .and_then(<[_]>::first)
            .ok_or("it presented no TLS certificate")?;
        let certificate = EndEntityCert::try_from(end_entity)
            .map_err(|_| "its TLS certificate does not parse")?;
        certificate
            .verify_is_valid_for_subject_name(host)
            .map_err(|_| "its TLS certificate does not name its node id's host")
    }
}

/// Why this node's own certificate cannot serve it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OwnCertificateProblem {
    /// The first certificate of the chain does not parse as X.509.
    Unparsable(String),
    /// The authority did not sign it (or it expired, or its key usage forbids TLS).
    NotSignedByAuthority(String),
    /// It does not name this node's host.
    WrongHost(String),
}

/// Checks that `chain` (end-entity first) chains to one of `authorities` for both TLS
/// roles a node plays (server and client) and names `host`.
pub(crate) fn check_own_certificate(
    chain: &[CertificateDer<'_>],
    authorities: &[CertificateDer<'_>],
    host: &ServerName<'_>,
) -> Result<(), OwnCertificateProblem> {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(OwnCertificateProblem::Unparsable(
            "holds no certificate".to_owned(),
        ));
    };
    let certificate = EndEntityCert::try_from(end_entity)
        .map_err(|error| OwnCertificateProblem::Unparsable(error.to_string()))?;
    let anchors = authorities
        .iter()
        .map(|authority| {
            webpki::anchor_from_trusted_cert(authority).map(|anchor| anchor.to_owned())
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            OwnCertificateProblem::NotSignedByAuthority(format!(
                "the authority's certificate does not parse: {error}"
            ))
        })?;
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        certificate
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                intermediates,
                UnixTime::now(),
                usage,
                None,
                None,
            )
            .map_err(|error| OwnCertificateProblem::NotSignedByAuthority(error.to_string()))?;
    }
    certificate
        .verify_is_valid_for_subject_name(host)
        .map_err(|error| OwnCertificateProblem::WrongHost(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Authority(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

    impl Authority {
        fn new() -> Authority {
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            Authority(rcgen::CertifiedIssuer::self_signed(params, key).unwrap())
        }

        fn der(&self) -> CertificateDer<'static> {
            self.0.der().clone()
        }

        fn issue(&self, names: &[&str]) -> CertificateDer<'static> {
            let key = rcgen::KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
            rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &self.0)
                .unwrap()
                .der()
                .clone()
        }
    }

    #[test]
    fn hosts_come_from_addresses_of_every_form() {
        assert_eq!(
            host_name("127.0.0.2:9513"),
            Some(ServerName::try_from("127.0.0.2").unwrap())
        );
        assert_eq!(
            host_name("[::1]:9513"),
            Some(ServerName::try_from("::1").unwrap())
        );
        assert_eq!(
            host_name("node07.cluster:1"),
            Some(ServerName::try_from("node07.cluster").unwrap())
        );
        assert_eq!(host_name("not an address"), None);
    }

    #[test]
    fn a_caller_must_present_a_certificate_naming_its_nodes_host() {
        let authority = Authority::new();
        let hosts = CertifiedHosts::new(&[
            "127.0.0.1:1".to_owned(),
            "127.0.0.2:1".to_owned(),
            "node3.lab:1".to_owned(),
        ]);
        let node1 = [authority.issue(&["127.0.0.2"])];
        assert_eq!(hosts.check(1, Some(&node1)), Ok(()));
        // The same certificate claiming node 0's id is refused.
        assert!(hosts.check(0, Some(&node1)).is_err());
        let dns = [authority.issue(&["NODE3.lab"])];
        assert_eq!(hosts.check(2, Some(&dns)), Ok(()));
        assert!(hosts.check(2, None).is_err());
        assert!(hosts.check(2, Some(&[])).is_err());
        assert!(hosts
            .check(2, Some(&[CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]))
            .is_err());
        assert!(hosts.check(9, Some(&node1)).is_err(), "no such node");
    }

    #[test]
    fn this_nodes_certificate_must_chain_to_the_authority_and_name_its_host() {
        let authority = Authority::new();
        let host = ServerName::try_from("127.0.0.1").unwrap();
        let own = [authority.issue(&["127.0.0.1"])];
        assert_eq!(
            check_own_certificate(&own, &[authority.der()], &host),
            Ok(())
        );
        assert!(matches!(
            check_own_certificate(&own, &[Authority::new().der()], &host),
            Err(OwnCertificateProblem::NotSignedByAuthority(_))
        ));
        assert!(matches!(
            check_own_certificate(&[authority.issue(&["10.0.0.1"])], &[authority.der()], &host),
            Err(OwnCertificateProblem::WrongHost(_))
        ));
        assert!(matches!(
            check_own_certificate(&[], &[authority.der()], &host),
            Err(OwnCertificateProblem::Unparsable(_))
        ));
    }
}
