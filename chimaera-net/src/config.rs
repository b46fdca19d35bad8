//! From a runtime's `networking:` config to a running [`TonicNetwork`]: the one place that
//! maps the config's keys onto [`NetOptions`], used by the `chimaera` command line and by
//! anyone who builds a runtime in code ([`attach`]).
//!
//! # Invariants
//!
//! * No hostfile, no network: [`network_from_config`] returns `None` and [`attach`]
//!   leaves the builder a single node, at no cost.
//! * With a hostfile, either a network bound to this node's own hostfile address exists,
//!   or a [`NetConfigError`] says which key is wrong (the hostfile's line, a node id out
//!   of range, no bindable entry, a missing or unusable secret, a port taken). Nothing
//!   here panics on a config's or a hostfile's content.
//! * The mapping: node addresses in hostfile order, each `host:port` (an entry's own port,
//!   else `networking.port`); this node from [`Membership::from_config`] (explicit
//!   `node_id`, else the first entry this process can bind); the secret from
//!   `networking.secret` or `networking.secret_file`; the deadline of the network's own
//!   calls is `networking.rpc_timeout_ms`, and connecting never takes longer than it;
//!   `networking.tls` (`cert`, `key`, `ca`: PEM files) becomes [`PeerTls`].
//! * TLS files are checked before anything binds: each must be readable (at most 1 MiB)
//!   and hold what its key needs (certificates, a private key); this node's certificate
//!   must chain to the authority for both TLS roles and name this node's hostfile host
//!   (see the `identity` module), and the key must be the certificate's. Else
//!   [`NetConfigError::Tls`] names the key, the path and the problem, and `runtime start`
//!   exits 2 as for any bad config.

use crate::identity::{check_own_certificate, host_name, OwnCertificateProblem};
use crate::{NetOptions, NetSetupError, PeerTls, TonicNetwork};
use chimaera_core::cluster::{Membership, MembershipError};
use chimaera_core::config::{ConfigError, RuntimeConfig, TlsFiles};
use chimaera_core::RuntimeBuilder;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest TLS file read: PEM certificates and keys are a few KiB; a bigger file is
/// the wrong file.
const MAX_TLS_FILE_BYTES: u64 = 1 << 20;

/// Why a runtime's `networking:` config gives no network.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// The hostfile is unreadable or malformed, or this node is not in it.
    #[error("cannot take this node's place in the cluster: {0}")]
    Membership(#[from] MembershipError),
    /// A hostfile is set but no secret.
    #[error("`networking.hostfile` is {} but the config has no cluster secret; set `networking.secret` or `networking.secret_file` to the same long random text on every node", hostfile.display())]
    SecretMissing {
        /// The configured hostfile.
        hostfile: PathBuf,
    },
    /// The secret could not be read, or its length is out of bounds.
    #[error("unusable cluster secret: {0}")]
    Secret(ConfigError),
    /// The secret has bytes a header cannot carry.
    #[error("the cluster secret must be visible ASCII (no spaces, control characters or non-ASCII bytes); pick a secret like the output of `openssl rand -hex 32`")]
    SecretNotVisibleAscii,
    /// A file of `networking.tls` is missing, unreadable, or not what its key needs.
    #[error("`{key}` ({}) {problem}", path.display())]
    Tls {
        /// The key naming the file: `networking.tls.cert`, `.key` or `.ca`.
        key: &'static str,
        /// The file, as resolved (relative paths against the config file's directory).
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The network could not start (its address, its port, its threads).
    #[error("cannot start node {node}'s network: {source}")]
    Setup {
        /// This node.
        node: u32,
        /// What failed.
        source: NetSetupError,
    },
}

/// The network options `config` describes: `None` without `networking.hostfile`.
pub fn options_from_config(config: &RuntimeConfig) -> Result<Option<NetOptions>, NetConfigError> {
    let networking = &config.networking;
    let Some(membership) = Membership::from_config(networking)? else {
        return Ok(None);
    };
    let Some(secret) = &networking.secret else {
        return Err(NetConfigError::SecretMissing {
            hostfile: networking.hostfile.clone().unwrap_or_default(),
        });
    };
    let secret = secret.load().map_err(NetConfigError::Secret)?;
    let secret = String::from_utf8(secret)
        .ok()
        .filter(|text| text.bytes().all(|byte| byte.is_ascii_graphic()))
        .ok_or(NetConfigError::SecretNotVisibleAscii)?;
    let addresses = membership
        .hostfile
        .hosts()
        .iter()
        .map(|entry| entry.address(membership.default_port))
        .collect();
    let mut options = NetOptions::new(membership.this_node, addresses, secret);
    if let Some(files) = &networking.tls {
        let own_address = &options.addresses[options.this_node as usize];
        options.tls = Some(load_tls(files, own_address)?);
    }
    options.rpc_timeout = networking.rpc_timeout;
    options.connect_timeout = options.connect_timeout.min(networking.rpc_timeout);
    Ok(Some(options))
}

/// The PEM files of `networking.tls`, checked (see the module's invariants) for the node
/// at `own_address`.
fn load_tls(files: &TlsFiles, own_address: &str) -> Result<PeerTls, NetConfigError> {
    const CERT: &str = "networking.tls.cert";
    const KEY: &str = "networking.tls.key";
    const CA: &str = "networking.tls.ca";
    let tls_error = |key: &'static str, path: &Path, problem: String| NetConfigError::Tls {
        key,
        path: path.to_owned(),
        problem,
    };
    let certificates = |key: &'static str, path: &Path, pem: &[u8]| {
        let parsed = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| tls_error(key, path, format!("is not valid PEM: {error}")))?;
        if parsed.is_empty() {
            return Err(tls_error(
                key,
                path,
                "holds no certificate (no `-----BEGIN CERTIFICATE-----` block); name a PEM \
                 certificate file"
                    .to_owned(),
            ));
        }
        Ok(parsed)
    };
    let cert_pem = read_tls_file(CERT, &files.cert)?;
    let chain = certificates(CERT, &files.cert, &cert_pem)?;
    let key_pem = read_tls_file(KEY, &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        tls_error(
            KEY,
            &files.key,
            format!(
                "holds no usable private key ({error}); name the PEM key (PKCS#8, PKCS#1 or \
                 SEC1) that belongs to `{CERT}`"
            ),
        )
    })?;
    let ca_pem = read_tls_file(CA, &files.ca)?;
    let authorities = certificates(CA, &files.ca, &ca_pem)?;
    let host = host_name(own_address).ok_or_else(|| {
        tls_error(
            CERT,
            &files.cert,
            format!("cannot be checked: this node's address `{own_address}` has no host"),
        )
    })?;
    check_own_certificate(&chain, &authorities, &host).map_err(|problem| match problem {
        OwnCertificateProblem::Unparsable(why) => tls_error(
            CERT,
            &files.cert,
            format!("holds a certificate that does not parse: {why}"),
        ),
        OwnCertificateProblem::NotSignedByAuthority(why) => tls_error(
            CERT,
            &files.cert,
            format!(
                "is not a valid node certificate signed by `{CA}` ({}): {why}; issue it from \
                 that authority, for both TLS server and client use",
                files.ca.display()
            ),
        ),
        OwnCertificateProblem::WrongHost(why) => tls_error(
            CERT,
            &files.cert,
            format!(
                "does not name this node's host: its subject alternative names must include \
                 the host of `{own_address}` (this node's hostfile entry) ({why})"
            ),
        ),
    })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|error| {
        tls_error(
            KEY,
            &files.key,
            format!("holds a key TLS cannot use ({error}); use an ECDSA, Ed25519 or RSA key"),
        )
    })?;
    match rustls::sign::CertifiedKey::new(chain, signing_key).keys_match() {
        // A key whose public half cannot be told: rustls itself accepts it.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(error) => {
            return Err(tls_error(
                KEY,
                &files.key,
                format!(
                    "does not belong to the certificate `{CERT}` ({}) names ({error}); give \
                     the key the certificate was issued for",
                    files.cert.display()
                ),
            ))
        }
    }
    Ok(PeerTls {
        ca_pem,
        cert_pem,
        key_pem,
    })
}

/// The bytes of the TLS file `key` names, at most [`MAX_TLS_FILE_BYTES`].
fn read_tls_file(key: &'static str, path: &Path) -> Result<Vec<u8>, NetConfigError> {
    let problem = |problem: String| NetConfigError::Tls {
        key,
        path: path.to_owned(),
        problem,
    };
    let file = std::fs::File::open(path)
        .map_err(|error| problem(format!("cannot be read: {error}; fix the path")))?;
    let mut bytes = Vec::new();
    file.take(MAX_TLS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| problem(format!("cannot be read: {error}")))?;
    if bytes.len() as u64 > MAX_TLS_FILE_BYTES {
        return Err(problem(format!(
            "is larger than {MAX_TLS_FILE_BYTES} bytes; PEM certificates and keys are a few KiB, \
                 so this is not one"
        )));
    }
    Ok(bytes)
}

/// Starts the network `config` describes (bound to this node's hostfile address and
/// serving): `None` without `networking.hostfile`.
pub fn network_from_config(config: &RuntimeConfig) -> Result<Option<TonicNetwork>, NetConfigError> {
    let Some(options) = options_from_config(config)? else {
        return Ok(None);
    };
    let node = options.this_node;
    let network =
        TonicNetwork::new(options).map_err(|source| NetConfigError::Setup { node, source })?;
    tracing::info!(
        node,
        address = %network.local_addr(),
        "cluster network listening"
    );
    Ok(Some(network))
}

/// `builder` with `config` and, when `config` names a hostfile, the [`TonicNetwork`] it
/// describes: the runtime it starts is that node of the cluster.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use chimaera_core::{Runtime, RuntimeConfig};
/// let config = RuntimeConfig::from_env()?;
/// # let builder = Runtime::builder(); // chimaera::builder() in a real binary
/// let runtime = chimaera_net::attach(builder, config)?.serve()?;
/// # drop(runtime); Ok(()) }
/// ```
pub fn attach(
    builder: RuntimeBuilder,
    config: RuntimeConfig,
) -> Result<RuntimeBuilder, NetConfigError> {
    let network = network_from_config(&config)?;
    let builder = builder.config(config);
    Ok(match network {
        Some(network) => builder.network(Arc::new(network)),
        None => builder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chimaera_core::config::ClusterSecret;
    use std::io::Write;
    use std::net::TcpListener;

    const SECRET: &str = "a-secret-of-enough-bytes";

    fn config_with_hostfile(text: &str) -> (RuntimeConfig, tempfile_path::TempPath) {
        let path = tempfile_path::TempPath::new(text);
        let mut config = RuntimeConfig::default();
        config.networking.hostfile = Some(path.0.clone());
        config.networking.secret = Some(ClusterSecret::Inline(SECRET.to_owned()));
        (config, path)
    }

    /// A file removed when dropped, without a crate for it.
    mod tempfile_path {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub(super) struct TempPath(pub(super) PathBuf);

        impl TempPath {
            pub(super) fn new(text: &str) -> TempPath {
                static NEXT: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "chimaera-net-config-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                TempPath(path)
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn no_hostfile_means_no_network() {
        assert!(options_from_config(&RuntimeConfig::default())
            .unwrap()
            .is_none());
        assert!(network_from_config(&RuntimeConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_config_maps_onto_the_options_in_hostfile_order() {
        let (mut config, _file) = config_with_hostfile("# nodes\n127.0.0.1:7001\nlocalhost\n");
        config.networking.port = 7100;
        config.networking.node_id = Some(1);
        config.networking.rpc_timeout = std::time::Duration::from_millis(300);
        let options = options_from_config(&config).unwrap().unwrap();
        assert_eq!(options.this_node, 1);
        assert_eq!(options.addresses, ["127.0.0.1:7001", "localhost:7100"]);
        assert_eq!(options.cluster_secret, SECRET);
        assert_eq!(options.rpc_timeout, std::time::Duration::from_millis(300));
        assert!(options.connect_timeout <= options.rpc_timeout);
        assert!(options.listen.is_none(), "listens on its own address");
        options.validate().unwrap();
    }

    #[test]
    fn every_bad_setting_is_a_typed_error() {
        let (config, _file) = config_with_hostfile("127.0.0.1:7001\nnode[3-1]\n");
        match options_from_config(&config) {
            Err(NetConfigError::Membership(MembershipError::Hostfile(err))) => {
                assert!(err.to_string().contains("line 2"), "{err}")
            }
            other => panic!("bad hostfile line accepted: {other:?}"),
        }

        let (mut config, _file) = config_with_hostfile("127.0.0.1:7001\n");
        config.networking.node_id = Some(3);
        assert!(matches!(
            options_from_config(&config),
            Err(NetConfigError::Membership(
                MembershipError::NodeIdOutOfRange { node: 3, nodes: 1 }
            ))
        ));

        // Every entry's port is held by someone else: no entry is this node.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let (config, _file) = config_with_hostfile(&format!("127.0.0.1:{port}\n"));
        assert!(matches!(
            options_from_config(&config),
            Err(NetConfigError::Membership(
                MembershipError::NotInHostfile { .. }
            ))
        ));
        // …and with the node named, the taken port is a setup error, not a panic.
        let (mut config, _file) = config_with_hostfile(&format!("127.0.0.1:{port}\n"));
        config.networking.node_id = Some(0);
        assert!(matches!(
            network_from_config(&config),
            Err(NetConfigError::Setup {
                node: 0,
                source: NetSetupError::Bind { .. }
            })
        ));

        let (mut config, _file) = config_with_hostfile("127.0.0.1:7001\n");
        config.networking.secret = None;
        assert!(matches!(
            options_from_config(&config),
            Err(NetConfigError::SecretMissing { .. })
        ));

        let (mut config, _file) = config_with_hostfile("127.0.0.1:7001\n");
        config.networking.secret = Some(ClusterSecret::File("/nonexistent/secret".into()));
        assert!(matches!(
            options_from_config(&config),
            Err(NetConfigError::Secret(_))
        ));

        let (mut config, _file) = config_with_hostfile("127.0.0.1:7001\n");
        let secret_file = tempfile_path::TempPath::new("a secret with spaces in it\n");
        config.networking.secret = Some(ClusterSecret::File(secret_file.0.clone()));
        assert!(matches!(
            options_from_config(&config),
            Err(NetConfigError::SecretNotVisibleAscii)
        ));
        let mut bytes = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&secret_file.0)
            .unwrap();
        bytes.write_all(b"\xff\xfe-not-utf8-at-all-here\n").unwrap();
        assert!(matches!(
            options_from_config(&config),
            Err(NetConfigError::SecretNotVisibleAscii)
        ));
    }

    /// A test authority's PEM, and a node certificate with its key for each of `hosts`.
    fn pki(hosts: &[&str]) -> (String, Vec<(String, String)>) {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let nodes = hosts
            .iter()
            .map(|host| {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = rcgen::CertificateParams::new(vec![(*host).to_owned()])
                    .unwrap()
                    .signed_by(&key, &issuer)
                    .unwrap();
                (cert.pem(), key.serialize_pem())
            })
            .collect();
        (issuer.pem(), nodes)
    }

    #[test]
    fn tls_files_map_onto_peer_tls_and_each_fault_names_its_key_and_path() {
        let (ca, mut nodes) = pki(&["127.0.0.1", "10.9.8.7"]);
        let (wrong_host_cert, other_key) = nodes.pop().unwrap();
        let (cert, key) = nodes.pop().unwrap();
        let (other_ca, _) = pki(&[]);
        let files = [ca, cert, key, other_ca, wrong_host_cert, other_key]
            .map(|text| tempfile_path::TempPath::new(&text));
        let [ca, cert, key, other_ca, wrong_host_cert, other_key] = &files;
        let (mut config, _hosts) = config_with_hostfile("127.0.0.1:7001\n");
        config.networking.node_id = Some(0);
        let with_tls = |config: &mut RuntimeConfig, cert: &Path, key: &Path, ca: &Path| {
            config.networking.tls = Some(TlsFiles {
                cert: cert.to_owned(),
                key: key.to_owned(),
                ca: ca.to_owned(),
            });
        };

        with_tls(&mut config, &cert.0, &key.0, &ca.0);
        let tls = options_from_config(&config).unwrap().unwrap().tls.unwrap();
        assert_eq!(tls.cert_pem, std::fs::read(&cert.0).unwrap());
        assert_eq!(tls.key_pem, std::fs::read(&key.0).unwrap());
        assert_eq!(tls.ca_pem, std::fs::read(&ca.0).unwrap());

        let missing = PathBuf::from("/nonexistent/node.crt");
        let cases: [(&Path, &Path, &Path, &str, &Path, &str); 7] = [
            (
                &cert.0,
                &other_key.0,
                &ca.0,
                "networking.tls.key",
                &other_key.0,
                "does not belong to the certificate",
            ),
            (
                &missing,
                &key.0,
                &ca.0,
                "networking.tls.cert",
                &missing,
                "cannot be read",
            ),
            (
                &cert.0,
                &cert.0,
                &ca.0,
                "networking.tls.key",
                &cert.0,
                "no usable private key",
            ),
            (
                &cert.0,
                &key.0,
                &key.0,
                "networking.tls.ca",
                &key.0,
                "holds no certificate",
            ),
            (
                &key.0,
                &key.0,
                &ca.0,
                "networking.tls.cert",
                &key.0,
                "holds no certificate",
            ),
            (
                &cert.0,
                &key.0,
                &other_ca.0,
                "networking.tls.cert",
                &cert.0,
                "not a valid node certificate signed by",
            ),
            (
                &wrong_host_cert.0,
                &key.0,
                &ca.0,
                "networking.tls.cert",
                &wrong_host_cert.0,
                "127.0.0.1:7001",
            ),
        ];
        for (cert, key, ca, wanted_key, wanted_path, wanted_problem) in cases {
            with_tls(&mut config, cert, key, ca);
            match options_from_config(&config) {
                Err(NetConfigError::Tls { key, path, problem }) => {
                    assert_eq!(
                        (key, path.as_path()),
                        (wanted_key, wanted_path),
                        "{problem}"
                    );
                    assert!(problem.contains(wanted_problem), "{key}: {problem}");
                    let message = NetConfigError::Tls {
                        key,
                        path: path.clone(),
                        problem,
                    }
                    .to_string();
                    assert!(
                        message.contains(wanted_key)
                            && message.contains(&path.display().to_string()),
                        "{message}"
                    );
                }
                other => panic!("{wanted_key}: {wanted_problem}: {other:?}"),
            }
        }
    }

    #[test]
    fn attach_starts_a_network_on_this_nodes_own_address() {
        let port = free_port();
        let (mut config, _file) = config_with_hostfile(&format!("127.0.0.1:{port}\n"));
        config.networking.node_id = Some(0);
        let network = network_from_config(&config).unwrap().unwrap();
        assert_eq!(
            network.local_addr(),
            std::net::SocketAddr::from(([127, 0, 0, 1], port))
        );
    }
}
