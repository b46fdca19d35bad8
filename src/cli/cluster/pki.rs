//! `cluster start --tls`: a throwaway certificate authority and one certificate per node,
//! for a dev cluster's mutual TLS (`networking.tls`).
//!
//! # Invariants
//!
//! * The authority's private key never touches a disk: it lives in this process only
//!   while the node certificates are signed, so nothing can issue a further certificate
//!   the cluster would trust. Only its certificate (`ca.crt`) is written.
//! * Node `i`'s certificate names exactly its host (the IP address of its hostfile entry)
//!   as its subject alternative name, which is what ties node `i`'s id to it (see
//!   `chimaera_net`'s identity checks). Keys are fresh ECDSA P-256 keys per node.
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The PEM files of one node.
pub(crate) struct NodePem {
    /// Its certificate.
    pub(crate) cert: String,
    /// Its private key.
    pub(crate) key: String,
}

/// The PEM files of a cluster: the authority's certificate and each node's pair.
pub(crate) struct ClusterPem {
    /// The authority's certificate.
    pub(crate) ca: String,
    /// Node `i`'s certificate and key, in node order.
    pub(crate) nodes: Vec<NodePem>,
}

/// A fresh authority for cluster `cluster`, and a certificate for each of `hosts`.
pub(crate) fn issue(cluster: &str, hosts: &[String]) -> Result<ClusterPem, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        DnType::CommonName,
        format!("chimaera dev cluster {cluster} (throwaway CA)"),
    );
    let authority = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let nodes = hosts
        .iter()
        .enumerate()
        .map(|(node, host)| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(vec![host.clone()])?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{cluster} node {node}"));
            let cert = params.signed_by(&key, &authority)?;
            Ok(NodePem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            })
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    Ok(ClusterPem {
        ca: authority.pem(),
        nodes,
    })
}
