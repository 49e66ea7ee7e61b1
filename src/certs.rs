//! `certs init`: the pair's own CA, one certificate per node for the peer link (mutual TLS),
//! and one front certificate valid for every node's name and address, so clients that are
//! redirected between the nodes never meet a certificate warning.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file exists already; certificates are never overwritten silently.
    #[error("{0} exists already (pass --force to replace the whole set)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A name is not usable in a certificate.
    #[error("{name:?} cannot go into a certificate: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Key generation or signing failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// One node of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node id; becomes the certificate's DNS name, which the peer checks.
    pub id: String,
    /// The node's address, also put into its certificates.
    pub address: IpAddr,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;

    /// `ID=ADDR`, for example `a=127.0.0.1`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (id, address) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: write ID=ADDRESS, e.g. a=192.0.2.10"))?;
        let address = address
            .parse()
            .map_err(|e| format!("{address:?} is not an IP address: {e}"))?;
        Ok(NodeSpec {
            id: id.to_owned(),
            address,
        })
    }
}

/// What `init` writes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The nodes of the pair.
    pub nodes: Vec<NodeSpec>,
    /// Extra DNS names for the front certificate (the service name clients use).
    pub front_names: Vec<String>,
    /// Replace existing files.
    pub force: bool,
}

fn san(name: &str) -> Result<SanType, CertsError> {
    if let Ok(address) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(address));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| CertsError::BadName {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(dns))
}

fn leaf_params(
    common_name: &str,
    names: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertificateParams, CertsError> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn write(path: &Path, contents: &str, secret: bool) -> Result<(), CertsError> {
    let error = |source| CertsError::Write {
        path: path.to_owned(),
        source,
    };
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    if secret {
        // A file that already existed (--force) kept its old mode at open: narrow it while it
        // is still empty, so the key is never readable by others, not for a moment.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(error)?;
    }
    file.write_all(contents.as_bytes()).map_err(error)?;
    Ok(())
}

/// Writes `ca.pem`, `ca.key`, `<id>.pem` + `<id>.key` per node, `front.pem` + `front.key`
/// into `dir`; returns the files written.
pub fn init(dir: &Path, plan: &Plan) -> Result<Vec<PathBuf>, CertsError> {
    let mut files = vec![dir.join("ca.pem"), dir.join("ca.key")];
    for node in &plan.nodes {
        files.push(dir.join(format!("{}.pem", node.id)));
        files.push(dir.join(format!("{}.key", node.id)));
    }
    files.push(dir.join("front.pem"));
    files.push(dir.join("front.key"));
    if !plan.force {
        if let Some(existing) = files.iter().find(|f| f.exists()) {
            return Err(CertsError::Exists(existing.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })?;

    let mut ca_params = CertificateParams::default();
    let mut ca_subject = DistinguishedName::new();
    ca_subject.push(DnType::CommonName, "standby-proxy pair CA");
    ca_params.distinguished_name = ca_subject;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    write(&files[0], &ca.pem(), false)?;
    write(&files[1], &ca_key_pem, true)?;
    let issuer: &Issuer<'_, KeyPair> = &ca;

    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    for (index, node) in plan.nodes.iter().enumerate() {
        let names = vec![node.id.clone(), node.address.to_string()];
        let params = leaf_params(&node.id, &names, both.clone())?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        write(&files[2 + 2 * index], &cert.pem(), false)?;
        write(&files[3 + 2 * index], &key.serialize_pem(), true)?;
    }

    let mut front_names: Vec<String> = plan.front_names.clone();
    for node in &plan.nodes {
        front_names.push(node.id.clone());
        front_names.push(node.address.to_string());
    }
    front_names.dedup();
    let params = leaf_params(
        front_names.first().map_or("standby-proxy", String::as_str),
        &front_names,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let count = files.len();
    write(&files[count - 2], &cert.pem(), false)?;
    write(&files[count - 1], &key.serialize_pem(), true)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_is_written_0600_even_over_a_wider_file() {
        let dir = std::env::temp_dir().join(format!("standby-certs-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = dir.join("x.key");
        std::fs::write(&key, "old").expect("old file");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write(&key, "secret", true).expect("write");
        let fresh = dir.join("y.key");
        write(&fresh, "secret", true).expect("write");
        for path in [&key, &fresh] {
            let mode = std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
            assert_eq!(std::fs::read_to_string(path).expect("read"), "secret");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
