//! Prometheus metrics (the contract: "Admin endpoint"): one registry per process, label sets typed so a
//! metric cannot be recorded with the wrong labels. Recording happens in [`crate::events`], next
//! to the log line for the same event; `/metrics` renders [`Metrics::encode`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::reason::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabels {
    pub set: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetRoleLabels {
    pub set: String,
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub set: String,
    pub subject: String,
    pub serial: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetResultLabels {
    pub set: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetReasonLabels {
    pub set: String,
    pub reason: &'static str,
}

/// `mtls_sidecar_actions_total{set,action,result,reason}`. `reason` (the failure class) is
/// written only when present: a success series is `{set,action,result="success"}`, which
/// Prometheus treats exactly as `reason=""` (an empty label is an absent label).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ActionLabels {
    pub set: String,
    pub action: &'static str,
    pub result: &'static str,
    /// `Some` for `result="failure"`.
    pub reason: Option<&'static str>,
}

impl EncodeLabelSet for ActionLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("set", self.set.as_str()).encode(encoder.encode_label())?;
        ("action", self.action).encode(encoder.encode_label())?;
        ("result", self.result).encode(encoder.encode_label())?;
        if let Some(reason) = self.reason {
            ("reason", reason).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    pub listener: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerCodeLabels {
    pub listener: String,
    pub code: u16,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric family the process exports.
pub struct Metrics {
    registry: Registry,
    pub expiration: Family<SetRoleLabels, Gauge>,
    pub info: Family<InfoLabels, Gauge>,
    pub reloads: Family<SetResultLabels, Counter>,
    pub reload_failures: Family<SetReasonLabels, Counter>,
    pub last_success: Family<SetLabels, Gauge>,
    pub actions: Family<ActionLabels, Counter>,
    pub connections_active: Family<ListenerLabels, Gauge>,
    pub connections_total: Family<ListenerLabels, Counter>,
    pub handshake_failures: Family<ListenerReasonLabels, Counter>,
    pub authz_denied: Family<ListenerLabels, Counter>,
    pub upstream_failures: Family<ListenerLabels, Counter>,
    pub upstream_active: Family<ListenerLabels, Gauge>,
    pub http_requests: Family<ListenerCodeLabels, Counter>,
    pub http_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    pub config_reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mtls_sidecar");
        let m = Metrics {
            expiration: Family::default(),
            info: Family::default(),
            reloads: Family::default(),
            reload_failures: Family::default(),
            last_success: Family::default(),
            actions: Family::default(),
            connections_active: Family::default(),
            connections_total: Family::default(),
            handshake_failures: Family::default(),
            authz_denied: Family::default(),
            upstream_failures: Family::default(),
            upstream_active: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(duration_histogram),
            config_reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "certificate_expiration_timestamp_seconds",
            "Unix time at which the served certificate expires (role=leaf) or the earliest CA of the bundle expires (role=ca)",
            m.expiration.clone(),
        );
        registry.register(
            "certificate_info",
            "The served leaf certificate (always 1)",
            m.info.clone(),
        );
        registry.register(
            "reloads",
            "Reload attempts by result: success (published), failure (refused), unchanged (same content)",
            m.reloads.clone(),
        );
        registry.register(
            "reload_failures",
            "Refused credential updates by reason code",
            m.reload_failures.clone(),
        );
        registry.register(
            "last_reload_success_timestamp_seconds",
            "Unix time of the last successful publish",
            m.last_success.clone(),
        );
        registry.register(
            "actions",
            "Actions run after a publish, by action, result and (for failures) reason",
            m.actions.clone(),
        );
        registry.register(
            "connections_active",
            "Open client connections",
            m.connections_active.clone(),
        );
        registry.register(
            "connections",
            "Accepted client connections",
            m.connections_total.clone(),
        );
        registry.register(
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "authz_denied",
            "Verified clients refused by the allow-list",
            m.authz_denied.clone(),
        );
        registry.register(
            "upstream_failures",
            "Upstream connections or requests that failed (refused, timed out, reset)",
            m.upstream_failures.clone(),
        );
        registry.register(
            "upstream_connections_active",
            "Open connections to the upstream (capped per listener in http mode)",
            m.upstream_active.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by response code",
            m.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers",
            m.http_duration.clone(),
        );
        registry.register(
            "config_reloads",
            "Re-reads of the run --config file by result: success (applied), failure (refused), unchanged",
            m.config_reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Creates every series of a credential set at zero, so rate() and increase() work from the start.
    pub fn init_set(&self, set: &str) {
        for result in ["success", "failure", "unchanged"] {
            let _ = self.reloads.get_or_create(&SetResultLabels {
                set: set.to_string(),
                result,
            });
        }
        for reason in Reason::ALL {
            let _ = self.reload_failures.get_or_create(&SetReasonLabels {
                set: set.to_string(),
                reason: reason.as_str(),
            });
        }
    }

    /// Creates the config reload series at zero (`run --config` only).
    pub fn init_config(&self) {
        for result in ["success", "failure", "unchanged"] {
            let _ = self.config_reloads.get_or_create(&ResultLabels { result });
        }
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_spec() {
        let m = Metrics::new();
        m.init_set("default");
        m.expiration
            .get_or_create(&SetRoleLabels {
                set: "default".into(),
                role: "leaf",
            })
            .set(1);
        m.last_success
            .get_or_create(&SetLabels {
                set: "default".into(),
            })
            .set(1);
        let text = m.encode();
        for name in [
            "mtls_sidecar_certificate_expiration_timestamp_seconds{set=\"default\",role=\"leaf\"} 1",
            "mtls_sidecar_reloads_total{set=\"default\",result=\"unchanged\"} 0",
            "mtls_sidecar_reload_failures_total{set=\"default\",reason=\"inconsistent_snapshot\"} 0",
            "mtls_sidecar_last_reload_success_timestamp_seconds{set=\"default\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
