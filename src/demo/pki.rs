//! The demo's throwaway PKI, made with rcgen: an ECDSA P-256 CA, a server leaf for
//! `api.production.svc.cluster.local`, `localhost` and 127.0.0.1 (serverAuth), and a client leaf
//! `CN=web-app, OU=Web Services, O=Example Org` (clientAuth), as in our users' guide.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub(super) struct DemoLeaf {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
}

pub(super) struct DemoPki {
    pub(super) ca_pem: String,
    pub(super) server: DemoLeaf,
    pub(super) client: DemoLeaf,
}

impl DemoPki {
    pub(super) fn generate() -> Result<Self, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::OrganizationName, "Example Org");
        ca.distinguished_name
            .push(DnType::CommonName, "mtls-sidecar demo CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - Duration::hours(1);
        ca.not_after = now + Duration::days(365);
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);

        let mut server = CertificateParams::new(vec![
            "api.production.svc.cluster.local".to_string(),
            "localhost".to_string(),
        ])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server
            .distinguished_name
            .push(DnType::CommonName, "api.production.svc.cluster.local");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];

        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::OrganizationName, "Example Org");
        client
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "Web Services");
        client
            .distinguished_name
            .push(DnType::CommonName, "web-app");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

        let leaf = |mut params: CertificateParams| -> Result<DemoLeaf, rcgen::Error> {
            params.not_before = now - Duration::minutes(5);
            params.not_after = now + Duration::days(90);
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate()?;
            Ok(DemoLeaf {
                cert_pem: params.signed_by(&key, &issuer)?.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        Ok(DemoPki {
            server: leaf(server)?,
            client: leaf(client)?,
            ca_pem,
        })
    }
}
