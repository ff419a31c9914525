//! The demo's throwaway PKI, made with rcgen: an ECDSA P-256 CA that stays in memory to sign
//! rotations, server leaves for `localhost`, 127.0.0.1 and `api.production.svc.cluster.local`
//! (serverAuth), and a client leaf `CN=web-app, OU=Web Services, O=Example Org` (clientAuth),
//! as in our users' guide.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub(super) struct DemoLeaf {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
}

pub(super) struct DemoPki {
    pub(super) ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl DemoPki {
    pub(super) fn generate() -> Result<Self, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        // A fresh name: the default one starts with a placeholder CN that would come first.
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name
            .push(DnType::OrganizationName, "Example Org");
        ca.distinguished_name
            .push(DnType::CommonName, "mtls-sidecar demo CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.not_before = now - Duration::hours(1);
        ca.not_after = now + Duration::days(365);
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        Ok(DemoPki {
            ca_pem,
            issuer: Issuer::new(ca, ca_key),
        })
    }

    /// A new server certificate (new key, new serial) each call: what a renewal produces.
    pub(super) fn server(&self) -> Result<DemoLeaf, rcgen::Error> {
        let mut p = CertificateParams::new(vec![
            "localhost".to_string(),
            "api.production.svc.cluster.local".to_string(),
        ])?;
        p.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        p.distinguished_name
            .push(DnType::CommonName, "api.production.svc.cluster.local");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(p)
    }

    pub(super) fn client(&self) -> Result<DemoLeaf, rcgen::Error> {
        let mut p = CertificateParams::default();
        // DER order O, OU, CN: printed most specific first as CN=web-app,OU=Web Services,O=Example Org.
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Example Org");
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, "Web Services");
        p.distinguished_name.push(DnType::CommonName, "web-app");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(p)
    }

    fn leaf(&self, mut params: CertificateParams) -> Result<DemoLeaf, rcgen::Error> {
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(90);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        Ok(DemoLeaf {
            cert_pem: params.signed_by(&key, &self.issuer)?.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
