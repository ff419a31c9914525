//! Why a TLS handshake (or, for `client`, the connection it needs) failed: one closed set of
//! reasons, the `reason` label of `mtls_sidecar_handshake_failures_total`. Each direction
//! pre-registers its own reasons at zero, so `rate()` works from the start and a typo cannot
//! create a new series.

/// A failed handshake, by cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// No valid credentials published yet.
    NoCredentials,
    Timeout,
    /// No common TLS version, cipher suite or ALPN protocol.
    Incompatible,
    /// Any other TLS protocol error.
    Protocol,
    /// The peer closed the connection during the handshake.
    Eof,
    Io,
    // `server`: the client's certificate.
    NoClientCert,
    ClientCertUntrusted,
    ClientCertExpired,
    ClientCertNotYetValid,
    ClientCertWrongUsage,
    ClientCertInvalid,
    // `client`: the server's certificate, or the server's verdict on ours.
    ServerNameMismatch,
    ServerCertUntrusted,
    ServerCertExpired,
    ServerCertNotYetValid,
    ServerCertWrongUsage,
    ServerCertPinMismatch,
    ServerCertInvalid,
    RejectedByServer,
}

use HandshakeFailure::*;

impl HandshakeFailure {
    /// The reasons a `server` listener can count.
    pub const INBOUND: &'static [HandshakeFailure] = &[
        NoCredentials,
        NoClientCert,
        ClientCertUntrusted,
        ClientCertExpired,
        ClientCertNotYetValid,
        ClientCertWrongUsage,
        ClientCertInvalid,
        Incompatible,
        Protocol,
        Timeout,
        Eof,
        Io,
    ];

    /// The reasons a `client` listener can count.
    pub const OUTBOUND: &'static [HandshakeFailure] = &[
        NoCredentials,
        ServerNameMismatch,
        ServerCertUntrusted,
        ServerCertExpired,
        ServerCertNotYetValid,
        ServerCertWrongUsage,
        ServerCertPinMismatch,
        ServerCertInvalid,
        RejectedByServer,
        Incompatible,
        Protocol,
        Timeout,
        Eof,
        Io,
    ];

    /// The label, as the README lists it.
    pub const fn as_str(self) -> &'static str {
        match self {
            NoCredentials => "no_credentials",
            Timeout => "timeout",
            Incompatible => "incompatible",
            Protocol => "protocol",
            Eof => "eof",
            Io => "io",
            NoClientCert => "no_client_cert",
            ClientCertUntrusted => "client_cert_untrusted",
            ClientCertExpired => "client_cert_expired",
            ClientCertNotYetValid => "client_cert_not_yet_valid",
            ClientCertWrongUsage => "client_cert_wrong_usage",
            ClientCertInvalid => "client_cert_invalid",
            ServerNameMismatch => "server_name_mismatch",
            ServerCertUntrusted => "server_cert_untrusted",
            ServerCertExpired => "server_cert_expired",
            ServerCertNotYetValid => "server_cert_not_yet_valid",
            ServerCertWrongUsage => "server_cert_wrong_usage",
            ServerCertPinMismatch => "server_cert_pin_mismatch",
            ServerCertInvalid => "server_cert_invalid",
            RejectedByServer => "rejected_by_server",
        }
    }

    /// A dense index for counter arrays.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// How many reasons there are.
    pub(crate) const COUNT: usize = RejectedByServer as usize + 1;
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_in_a_direction_and_labels_are_unique() {
        let mut all: Vec<HandshakeFailure> = HandshakeFailure::INBOUND
            .iter()
            .chain(HandshakeFailure::OUTBOUND)
            .copied()
            .collect();
        all.sort_by_key(|r| r.index());
        all.dedup();
        assert_eq!(all.len(), HandshakeFailure::COUNT);
        let mut labels: Vec<&str> = all.iter().map(|r| r.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), HandshakeFailure::COUNT);
    }
}
