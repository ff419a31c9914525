//! A throwaway PKI for the library's unit tests (rcgen): a CA and server leaves as PEM text.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that issues server leaves for `localhost`.
pub(crate) struct TestCa {
    pub(crate) pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its PKCS#8 key, as PEM.
pub(crate) struct TestLeaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "unit test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A fresh server leaf (serverAuth, `localhost`) with a key of its own.
    pub(crate) fn server(&self) -> TestLeaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("SAN");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        let key = KeyPair::generate().expect("leaf key");
        TestLeaf {
            cert_pem: params.signed_by(&key, &self.issuer).expect("leaf").pem(),
            key_pem: key.serialize_pem(),
        }
    }
}
