#!/usr/bin/env python3
"""Validate the rendered manifests of deploy/ (run by .ci/validate-deploy, one YAML stream per
kustomization, each file named after its kustomization directory).

1. Core Kubernetes objects: kubernetes-validate in strict mode (unknown fields are errors), against
   the oldest Kubernetes the manifests support (1.29: native sidecars, i.e. init containers with
   `restartPolicy: Always`) and the newest schema set the installed kubernetes-validate has.
2. cert-manager, trust-manager and Prometheus Operator objects (CRDs, which kubernetes-validate has
   no schemas for): against the fields their API references document, transcribed below with the
   URL of each page. Unknown fields, wrong types and values outside documented enums are errors;
   so are a few documented constraints (key sizes per algorithm, one issuer type, durations).
3. Our own policy for every mtls-sidecar container (the issue's checklist): a pinned image,
   runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, ALL capabilities dropped,
   seccomp RuntimeDefault, requests and limits, and for long-running sidecars: native sidecar,
   readiness on /readyz, liveness on /healthz.
4. For a sidecar that runs `run --config FILE`: FILE is a key of a ConfigMap this kustomization
   renders (a configMapGenerator), mounted whole at FILE's directory in that container; the
   file is a YAML mapping; every path it names (sets, watch entries) is under one of the
   container's volumeMounts (the root filesystem is read-only and holds no credentials); the
   httpGet probes name the port of its `admin-listen`; and every server listener's port is a
   container port of the sidecar. Whether the binary accepts the file (`run --config FILE
   --check`) is checked by tests/it/deploy_manifests.rs, with the binary.
5. Cluster policy: only deploy/namespace renders a Namespace (deleting any other kustomization
   must not delete the namespace and all in it); every pod meets Pod Security's `restricted`
   profile (deploy/namespace enforces it); a Service's named targetPort is a port of a regular
   container of the pods it selects (Kubernetes < 1.33 resolves no init container's port name,
   so a native sidecar's named port gets endpoints without a port); a root CA Certificate keeps
   its key on renewal (rotationPolicy Never); a leaf Certificate is signed by a namespaced Issuer
   and carries the URI SAN spiffe://cluster.local/ns/<its namespace>/sa/<name>, and our sidecars
   authorise callers by URI, never by CN; every alert has a severity and a runbook_url.

Usage: validate_deploy.py RENDERED.yaml...   (exit 1 and one line per problem on failure)
"""

import os
import re
import sys

import yaml
from kubernetes_validate import utils as kv

# The oldest Kubernetes minor the manifests are written for: native sidecars are on by default
# from 1.29.
MIN_KUBERNETES = "1.29.0"

SIDECAR_IMAGE_RE = re.compile(r"(^|/)mtls-sidecar([:@]|$)")


# === A small schema language for documented fields ===

class Str:
    def __init__(self, pattern=None, max_len=None):
        self.pattern = re.compile(pattern) if pattern else None
        self.max_len = max_len


class Int:
    pass


class Bool:
    pass


class IntOrStr:
    pass


class Enum:
    def __init__(self, *values):
        self.values = values


class List:
    def __init__(self, item, min_items=0, max_items=None):
        self.item = item
        self.min_items = min_items
        self.max_items = max_items


class Map:
    """String keys, values of one type (labels, annotations)."""

    def __init__(self, value):
        self.value = value


class Obj:
    def __init__(self, fields, required=()):
        self.fields = fields
        self.required = required


class Opaque:
    """A documented field we do not use: its presence is allowed, its content not checked."""


def check(value, spec, path, errors):
    if isinstance(spec, Opaque):
        return
    if isinstance(spec, Str):
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {value!r}")
        elif spec.pattern and not spec.pattern.fullmatch(value):
            errors.append(f"{path}: {value!r} does not match {spec.pattern.pattern}")
        elif spec.max_len and len(value) > spec.max_len:
            errors.append(f"{path}: longer than {spec.max_len} characters")
    elif isinstance(spec, Int):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer, got {value!r}")
    elif isinstance(spec, Bool):
        if not isinstance(value, bool):
            errors.append(f"{path}: expected a boolean, got {value!r}")
    elif isinstance(spec, IntOrStr):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: expected an integer or a string, got {value!r}")
    elif isinstance(spec, Enum):
        if value not in spec.values:
            errors.append(f"{path}: {value!r} is not one of {list(spec.values)}")
    elif isinstance(spec, List):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return
        if len(value) < spec.min_items:
            errors.append(f"{path}: needs at least {spec.min_items} item(s)")
        if spec.max_items is not None and len(value) > spec.max_items:
            errors.append(f"{path}: at most {spec.max_items} items")
        for i, item in enumerate(value):
            check(item, spec.item, f"{path}[{i}]", errors)
    elif isinstance(spec, Map):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return
        for k, v in value.items():
            check(v, spec.value, f"{path}.{k}", errors)
    elif isinstance(spec, Obj):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {value!r}")
            return
        for k in spec.required:
            if k not in value:
                errors.append(f"{path}: required field `{k}` is missing")
        for k, v in value.items():
            if k not in spec.fields:
                errors.append(f"{path}: unknown field `{k}` (documented: {sorted(spec.fields)})")
            else:
                check(v, spec.fields[k], f"{path}.{k}", errors)
    else:
        raise TypeError(spec)


STRINGS = List(Str())
STRING_MAP = Map(Str())

# Go time.ParseDuration, as cert-manager parses `duration` and `renewBefore`.
GO_DURATION = Str(r"([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")
# Prometheus Operator's Duration type (pattern from its CRDs).
PROM_DURATION = Str(r"0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?")

# metav1.LabelSelector.
LABEL_SELECTOR = Obj({
    "matchLabels": STRING_MAP,
    "matchExpressions": List(Obj({
        "key": Str(),
        "operator": Enum("In", "NotIn", "Exists", "DoesNotExist"),
        "values": STRINGS,
    }, required=("key", "operator"))),
})

OBJECT_META = Obj({
    "name": Str(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", max_len=253),
    "namespace": Str(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", max_len=63),
    "labels": STRING_MAP,
    "annotations": STRING_MAP,
}, required=("name",))


# === cert-manager ===
# https://cert-manager.io/docs/reference/api-docs/#cert-manager.io/v1.CertificateSpec
# (fields as in cert-manager v1.18's CRD, deploy/crds/cert-manager.io_certificates.yaml)

KEY_USAGES = (
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
)

CERTIFICATE_SPEC = Obj({
    "additionalOutputFormats": List(Obj({"type": Enum("DER", "CombinedPEM")}, required=("type",))),
    "commonName": Str(max_len=64),
    "dnsNames": STRINGS,
    "duration": GO_DURATION,
    "emailAddresses": STRINGS,
    "encodeUsagesInRequest": Bool(),
    "ipAddresses": STRINGS,
    "isCA": Bool(),
    "issuerRef": Obj({"group": Str(), "kind": Str(), "name": Str()}, required=("name",)),
    "keystores": Obj({"jks": Opaque(), "pkcs12": Opaque()}),
    "literalSubject": Str(),
    "nameConstraints": Opaque(),
    "otherNames": List(Obj({"oid": Str(), "utf8Value": Str()})),
    "privateKey": Obj({
        "algorithm": Enum("RSA", "ECDSA", "Ed25519"),
        "encoding": Enum("PKCS1", "PKCS8"),
        "rotationPolicy": Enum("Never", "Always"),
        "size": Int(),
    }),
    "renewBefore": GO_DURATION,
    "renewBeforePercentage": Int(),
    "revisionHistoryLimit": Int(),
    "secretName": Str(),
    "secretTemplate": Obj({"annotations": STRING_MAP, "labels": STRING_MAP}),
    "signatureAlgorithm": Enum("SHA256WithRSA", "SHA384WithRSA", "SHA512WithRSA", "ECDSAWithSHA256",
                               "ECDSAWithSHA384", "ECDSAWithSHA512", "PureEd25519"),
    "subject": Obj({
        "countries": STRINGS, "localities": STRINGS, "organizationalUnits": STRINGS,
        "organizations": STRINGS, "postalCodes": STRINGS, "provinces": STRINGS,
        "serialNumber": Str(), "streetAddresses": STRINGS,
    }),
    "uris": STRINGS,
    "usages": List(Enum(*KEY_USAGES)),
}, required=("issuerRef", "secretName"))

# https://cert-manager.io/docs/reference/api-docs/#cert-manager.io/v1.IssuerSpec
# (CAIssuer and SelfSignedIssuer in full; the other issuer types are not used here).
ISSUER_TYPES = ("acme", "ca", "selfSigned", "vault", "venafi")
ISSUER_SPEC = Obj({
    "acme": Opaque(),
    "ca": Obj({
        "secretName": Str(),
        "crlDistributionPoints": STRINGS,
        "issuingCertificateURLs": STRINGS,
        "ocspServers": STRINGS,
    }, required=("secretName",)),
    "selfSigned": Obj({"crlDistributionPoints": STRINGS}),
    "vault": Opaque(),
    "venafi": Opaque(),
})


def go_duration_seconds(text):
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text))


def certificate_rules(spec, path, errors):
    key = spec.get("privateKey", {})
    algorithm, size = key.get("algorithm", "RSA"), key.get("size")
    allowed = {"RSA": (2048, 4096, 8192), "ECDSA": (256, 384, 521)}.get(algorithm)
    if size is not None and allowed and size not in allowed:
        errors.append(f"{path}.privateKey.size: {size} is not valid for {algorithm} (allowed: {allowed})")
    # Ours, not cert-manager's: mtls-sidecar refuses P-521 keys (`unsupported_key`).
    if algorithm == "ECDSA" and size == 521:
        errors.append(f"{path}.privateKey: mtls-sidecar supports ECDSA P-256 and P-384, not P-521")
    if "literalSubject" in spec and ("subject" in spec or "commonName" in spec):
        errors.append(f"{path}: literalSubject cannot be combined with subject or commonName")
    if "renewBefore" in spec and "renewBeforePercentage" in spec:
        errors.append(f"{path}: renewBefore and renewBeforePercentage are mutually exclusive")
    duration = go_duration_seconds(spec.get("duration", "2160h"))
    if duration < 3600:
        errors.append(f"{path}.duration: the minimum is 1h")
    if "renewBefore" in spec:
        before = go_duration_seconds(spec["renewBefore"])
        if before < 300:
            errors.append(f"{path}.renewBefore: the minimum is 5m")
        if before >= duration:
            errors.append(f"{path}.renewBefore: must be shorter than duration")
    # Ours: a root renewed with a new key is a new root, trusted by no bundle yet; every leaf
    # re-issued under it would fail at once. A new CA key is a planned rotation (docs/ca-rotation.md).
    if spec.get("isCA") and spec.get("privateKey", {}).get("rotationPolicy") != "Never":
        errors.append(f"{path}.privateKey.rotationPolicy: a CA Certificate must keep its key on renewal "
                      "(Never); rotate a CA key with docs/ca-rotation.md")
    ref = spec.get("issuerRef", {})
    if ref.get("group", "cert-manager.io") == "cert-manager.io" and \
            ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
        errors.append(f"{path}.issuerRef.kind: {ref.get('kind')!r} is not Issuer or ClusterIssuer")


def issuer_rules(spec, path, errors):
    types = [t for t in ISSUER_TYPES if t in spec]
    if len(types) != 1:
        errors.append(f"{path}: exactly one issuer type of {list(ISSUER_TYPES)} must be set, found {types}")


# === trust-manager ===
# https://cert-manager.io/docs/trust/trust-manager/api-reference/#bundle
# (trust.cert-manager.io/v1alpha1, as in trust-manager's CRD trust.cert-manager.io_bundles.yaml)

BUNDLE_OBJECT_REF = Obj({
    "name": Str(), "key": Str(), "includeAllKeys": Bool(), "selector": LABEL_SELECTOR,
})
BUNDLE_TARGET_OBJECT = Obj({
    "key": Str(), "metadata": Obj({"annotations": STRING_MAP, "labels": STRING_MAP}),
}, required=("key",))
BUNDLE_SPEC = Obj({
    "sources": List(Obj({
        "configMap": BUNDLE_OBJECT_REF,
        "secret": BUNDLE_OBJECT_REF,
        "inLine": Str(),
        "useDefaultCAs": Bool(),
    }), min_items=1, max_items=100),
    "target": Obj({
        "configMap": BUNDLE_TARGET_OBJECT,
        "secret": BUNDLE_TARGET_OBJECT,
        "additionalFormats": Obj({
            "jks": Obj({"key": Str(), "password": Str()}, required=("key",)),
            "pkcs12": Obj({"key": Str(), "password": Str(),
                           "profile": Enum("LegacyRC2", "LegacyDES", "Modern2023")}, required=("key",)),
        }),
        "namespaceSelector": LABEL_SELECTOR,
    }),
}, required=("sources",))


# ClusterBundle, the API replacing Bundle: trust-manager.io/v1alpha2, fields as in trust-manager's
# CRD deploy/crds/trust-manager.io_clusterbundles.yaml (main branch, commit fc1b53dd; no Helm chart
# up to v0.24.0 installs it yet).
CLUSTER_BUNDLE_TARGET_DATA = List(Obj({
    "key": Str(), "format": Enum("PEM", "PKCS12"), "password": Str(),
    "profile": Enum("LegacyRC2", "LegacyDES", "Modern2023"),
}, required=("key",)), min_items=1)
CLUSTER_BUNDLE_TARGET_OBJECT = Obj({
    "data": CLUSTER_BUNDLE_TARGET_DATA,
    "metadata": Obj({"annotations": STRING_MAP, "labels": STRING_MAP}),
}, required=("data",))
CLUSTER_BUNDLE_SPEC = Obj({
    "defaultCAs": Obj({"provider": Enum("System", "Disabled")}, required=("provider",)),
    "inLineCAs": Str(),
    "sourceRefs": List(Obj({
        "key": Str(r"[0-9A-Za-z_.\-*]+", max_len=253), "kind": Enum("ConfigMap", "Secret"),
        "name": Str(max_len=253), "selector": LABEL_SELECTOR,
    }, required=("key", "kind")), max_items=100),
    "target": Obj({
        "configMap": CLUSTER_BUNDLE_TARGET_OBJECT,
        "secret": CLUSTER_BUNDLE_TARGET_OBJECT,
        "namespaceSelector": LABEL_SELECTOR,
    }, required=("namespaceSelector",)),
})


def cluster_bundle_rules(spec, path, errors):
    for i, ref in enumerate(spec.get("sourceRefs", [])):
        if ("name" in ref) == ("selector" in ref):
            errors.append(f"{path}.sourceRefs[{i}]: set exactly one of name and selector")
    target = spec.get("target", {})
    if "configMap" not in target and "secret" not in target:
        errors.append(f"{path}.target: needs a configMap or a secret")


def bundle_rules(spec, path, errors):
    for i, source in enumerate(spec.get("sources", [])):
        kinds = [k for k in ("configMap", "secret", "inLine", "useDefaultCAs") if k in source]
        if len(kinds) != 1:
            errors.append(f"{path}.sources[{i}]: exactly one source type must be set, found {kinds}")
        for k in ("configMap", "secret"):
            ref = source.get(k)
            if ref is None:
                continue
            if ("name" in ref) == ("selector" in ref):
                errors.append(f"{path}.sources[{i}].{k}: set exactly one of name and selector")
            if ("key" in ref) == bool(ref.get("includeAllKeys")):
                errors.append(f"{path}.sources[{i}].{k}: set exactly one of key and includeAllKeys")
    target = spec.get("target", {})
    if "configMap" not in target and "secret" not in target:
        errors.append(f"{path}.target: needs a configMap or a secret")


# === Prometheus Operator ===
# https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.PrometheusRuleSpec
# https://prometheus-operator.dev/docs/api-reference/api/#monitoring.coreos.com/v1.PodMonitorSpec

PROMETHEUS_RULE_SPEC = Obj({
    "groups": List(Obj({
        "name": Str(),
        "labels": STRING_MAP,
        "interval": PROM_DURATION,
        "query_offset": PROM_DURATION,
        "rules": List(Obj({
            "record": Str(),
            "alert": Str(),
            "expr": IntOrStr(),
            "for": PROM_DURATION,
            "keep_firing_for": PROM_DURATION,
            "labels": STRING_MAP,
            "annotations": STRING_MAP,
        }, required=("expr",))),
        "partial_response_strategy": Str(r"(?i)(abort|warn)?"),
        "limit": Int(),
    }, required=("name",))),
})

POD_METRICS_ENDPOINT = Obj({
    "port": Str(), "portNumber": Int(), "targetPort": IntOrStr(),
    "path": Str(), "scheme": Enum("http", "https", "HTTP", "HTTPS"),
    "params": Map(STRINGS),
    "interval": PROM_DURATION, "scrapeTimeout": PROM_DURATION,
    "tlsConfig": Opaque(), "bearerTokenSecret": Opaque(), "basicAuth": Opaque(),
    "oauth2": Opaque(), "authorization": Opaque(),
    "honorLabels": Bool(), "honorTimestamps": Bool(), "trackTimestampsStaleness": Bool(),
    "metricRelabelings": List(Opaque()), "relabelings": List(Opaque()),
    "proxyUrl": Str(), "noProxy": Str(), "proxyFromEnvironment": Bool(),
    "proxyConnectHeader": Opaque(),
    "followRedirects": Bool(), "enableHttp2": Bool(), "filterRunning": Bool(),
})
POD_MONITOR_SPEC = Obj({
    "jobLabel": Str(),
    "podTargetLabels": STRINGS,
    "podMetricsEndpoints": List(POD_METRICS_ENDPOINT),
    "selector": LABEL_SELECTOR,
    "selectorMechanism": Enum("RelabelConfig", "RoleSelector"),
    "namespaceSelector": Obj({"any": Bool(), "matchNames": STRINGS}),
    "sampleLimit": Int(), "targetLimit": Int(),
    "scrapeProtocols": List(Str()), "fallbackScrapeProtocol": Str(),
    "labelLimit": Int(), "labelNameLengthLimit": Int(), "labelValueLengthLimit": Int(),
    "scrapeClassicHistograms": Bool(), "nativeHistogramBucketLimit": Int(),
    "nativeHistogramMinBucketFactor": Opaque(), "convertClassicHistogramsToNHCB": Bool(),
    "keepDroppedTargets": Int(),
    "attachMetadata": Obj({"node": Bool()}),
    "scrapeClass": Str(),
    "bodySizeLimit": Str(),
}, required=("selector",))


def prometheus_rule_rules(spec, path, errors):
    names = [g.get("name") for g in spec.get("groups", [])]
    if len(names) != len(set(names)):
        errors.append(f"{path}.groups: group names must be unique")
    for gi, group in enumerate(spec.get("groups", [])):
        for ri, rule in enumerate(group.get("rules", [])):
            where = f"{path}.groups[{gi}].rules[{ri}]"
            if ("alert" in rule) == ("record" in rule):
                errors.append(f"{where}: set exactly one of alert and record")
            if "record" in rule and "annotations" in rule:
                errors.append(f"{where}: annotations are only valid for alerting rules")
            # Ours: whoever is paged needs to know how bad it is and what to do.
            if "alert" in rule:
                if (rule.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                    errors.append(f"{where}: alert {rule['alert']}: set labels.severity "
                                  "(critical, warning or info)")
                if not (rule.get("annotations") or {}).get("runbook_url"):
                    errors.append(f"{where}: alert {rule['alert']}: set annotations.runbook_url")


def pod_monitor_rules(spec, path, errors):
    for i, endpoint in enumerate(spec.get("podMetricsEndpoints", [])):
        if "port" not in endpoint and "portNumber" not in endpoint and "targetPort" not in endpoint:
            errors.append(f"{path}.podMetricsEndpoints[{i}]: name the port to scrape")


# (kind, apiVersion) -> (spec schema, extra rules, namespaced)
CUSTOM_KINDS = {
    ("Certificate", "cert-manager.io/v1"): (CERTIFICATE_SPEC, certificate_rules, True),
    ("Issuer", "cert-manager.io/v1"): (ISSUER_SPEC, issuer_rules, True),
    ("ClusterIssuer", "cert-manager.io/v1"): (ISSUER_SPEC, issuer_rules, False),
    ("Bundle", "trust.cert-manager.io/v1alpha1"): (BUNDLE_SPEC, bundle_rules, False),
    ("ClusterBundle", "trust-manager.io/v1alpha2"): (CLUSTER_BUNDLE_SPEC, cluster_bundle_rules, False),
    ("PrometheusRule", "monitoring.coreos.com/v1"): (PROMETHEUS_RULE_SPEC, prometheus_rule_rules, True),
    ("PodMonitor", "monitoring.coreos.com/v1"): (POD_MONITOR_SPEC, pod_monitor_rules, True),
}
CUSTOM_GROUPS = {api.split("/")[0] for _, api in CUSTOM_KINDS}


def check_custom(doc, where, errors):
    key = (doc.get("kind"), doc.get("apiVersion"))
    if key not in CUSTOM_KINDS:
        errors.append(f"{where}: no documented schema for {key[0]} {key[1]} in validate_deploy.py")
        return
    spec_schema, rules, namespaced = CUSTOM_KINDS[key]
    check(doc, Obj({"apiVersion": Str(), "kind": Str(), "metadata": OBJECT_META, "spec": spec_schema},
                   required=("apiVersion", "kind", "metadata", "spec")), where, errors)
    meta = doc.get("metadata", {})
    if namespaced and "namespace" not in meta:
        errors.append(f"{where}: a {key[0]} is namespaced: set metadata.namespace")
    if not namespaced and "namespace" in meta:
        errors.append(f"{where}: a {key[0]} is cluster-scoped: remove metadata.namespace "
                      "(a kustomization `namespace:` adds one to kinds kustomize does not know)")
    if isinstance(doc.get("spec"), dict):
        rules(doc["spec"], f"{where}.spec", errors)


# === Cross-object and policy checks ===

def certificate_issuers_exist(docs, errors):
    """Within one rendered kustomization: every Certificate's issuer is in it too."""
    issuers = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])
               for _, d in docs if d.get("kind") in ("Issuer", "ClusterIssuer")}
    for where, d in docs:
        if d.get("kind") != "Certificate":
            continue
        ref = d["spec"].get("issuerRef", {})
        kind = ref.get("kind", "Issuer")
        ns = d["metadata"].get("namespace") if kind == "Issuer" else None
        if ref.get("group", "cert-manager.io") == "cert-manager.io" and (kind, ns, ref.get("name")) not in issuers:
            errors.append(f"{where}: issuer {kind} {ref.get('name')!r} is not part of this kustomization")


SPIFFE_ID_RE = re.compile(r"spiffe://cluster\.local/ns/([a-z0-9]([-a-z0-9]*[a-z0-9])?)/sa/[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


def certificate_policy(docs, errors):
    """Leaf Certificates: a namespaced Issuer, and the workload's URI SAN in their namespace.

    A ClusterIssuer signs for a Certificate of any namespace, so anyone allowed to create a
    Certificate somewhere could mint the identities our examples allow; an Issuer signs only in its
    own namespace, and the URI names that namespace."""
    for where, d in docs:
        if d.get("kind") != "Certificate":
            continue
        spec = d.get("spec") or {}
        if spec.get("isCA"):
            continue
        kind = (spec.get("issuerRef") or {}).get("kind", "Issuer")
        if kind != "Issuer":
            errors.append(f"{where}: a leaf Certificate must be signed by a namespaced Issuer, not a "
                          f"{kind} (which signs for every namespace)")
        ns = d["metadata"].get("namespace")
        matches = [SPIFFE_ID_RE.fullmatch(u) for u in spec.get("uris") or []]
        if not any(m and m.group(1) == ns for m in matches):
            errors.append(f"{where}: a leaf Certificate needs the URI SAN "
                          f"spiffe://cluster.local/ns/{ns}/sa/<name> (the identity servers allow)")


# The rendered name of deploy/namespace: the one kustomization that may make a Namespace.
NAMESPACE_KUSTOMIZATION = "namespace"


def namespace_policy(path, docs, errors):
    """`kubectl delete -k DIR` deletes what DIR renders: a Namespace there takes everything in it."""
    if os.path.splitext(os.path.basename(path))[0] == NAMESPACE_KUSTOMIZATION:
        return
    for where, d in docs:
        if d.get("kind") == "Namespace":
            errors.append(f"{where}: only deploy/namespace may render a Namespace (`kubectl delete -k` "
                          "of this kustomization would delete the namespace and everything in it)")


def pod_labels(doc):
    if doc.get("kind") == "Pod":
        return (doc.get("metadata") or {}).get("labels") or {}
    if doc.get("kind") == "CronJob":
        return {}
    return (((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def availability_policy(docs, errors):
    """A Deployment of several replicas keeps one through voluntary disruptions and spreads over
    nodes: a PodDisruptionBudget selects its pods, and it has topologySpreadConstraints."""
    budgets = [((d.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
               for _, d in docs if d.get("kind") == "PodDisruptionBudget"]
    for where, d in docs:
        if d.get("kind") != "Deployment" or ((d.get("spec") or {}).get("replicas") or 1) < 2:
            continue
        labels = (((d["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {})
        if not any(b and all(labels.get(k) == v for k, v in b.items()) for b in budgets):
            errors.append(f"{where}: {d['spec']['replicas']} replicas but no PodDisruptionBudget "
                          "selects its pods (a node drain may take them all)")
        if not (pod_spec_of(d) or {}).get("topologySpreadConstraints"):
            errors.append(f"{where}: {d['spec']['replicas']} replicas without "
                          "topologySpreadConstraints (they may all land on one node)")


def service_target_ports(docs, errors):
    """A named targetPort must be a port of a regular container of every pod the Service selects.

    Before Kubernetes 1.33 the EndpointSlice controller looks names up in regular containers only
    (kubernetes/kubernetes#127958, #128850): a port named on a native sidecar (an init container)
    gets endpoints without a port, and the Service refuses every connection."""
    workloads = [(where, d) for where, d in docs if pod_spec_of(d)]
    for where, d in docs:
        if d.get("kind") != "Service":
            continue
        spec = d.get("spec") or {}
        selector = spec.get("selector") or {}
        selected = [(w, pod_spec_of(doc)) for w, doc in workloads
                    if selector and all(pod_labels(doc).get(k) == v for k, v in selector.items())]
        for port in spec.get("ports") or []:
            target = port.get("targetPort")
            if not isinstance(target, str):
                continue
            if not selected:
                errors.append(f"{where}: targetPort {target!r} is a name, and the Service selects no pod "
                              "of this kustomization to check it against: use the port number")
            for w, pod in selected:
                regular = {p.get("name") for c in pod.get("containers") or [] for p in c.get("ports") or []}
                init = {p.get("name") for c in pod.get("initContainers") or [] for p in c.get("ports") or []}
                if target in regular:
                    continue
                why = ("only an init container (a native sidecar) declares it, and Kubernetes < 1.33 "
                       "resolves no init container's port name" if target in init
                       else "no regular container declares it")
                workload = w.split(": ", 1)[-1]
                errors.append(f"{where}: targetPort {target!r} of {workload}: {why}; use the port number")


# Pod Security Standards, `restricted` (https://kubernetes.io/docs/concepts/security/pod-security-standards/):
# what deploy/namespace enforces, checked here before a cluster refuses the pod.
PSS_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                    "projected", "secret"}


def pod_security_restricted(where, doc, errors):
    pod = pod_spec_of(doc)
    if not pod:
        return
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            errors.append(f"{where}: {field} is not allowed by Pod Security `restricted`")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= PSS_VOLUME_TYPES:
            errors.append(f"{where}: volume {v.get('name')!r} ({sorted(kinds)}) is not allowed by Pod "
                          "Security `restricted`")
    for section in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(section) or []:
            at = f"{where} {section}/{c.get('name')}: Pod Security `restricted`"
            sc = c.get("securityContext") or {}
            if sc.get("privileged"):
                errors.append(f"{at}: privileged")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{at}: set securityContext.allowPrivilegeEscalation: false")
            if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
                errors.append(f"{at}: runAsNonRoot must be true (container or pod)")
            if sc.get("runAsUser", psc.get("runAsUser")) == 0:
                errors.append(f"{at}: runAsUser 0")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                errors.append(f"{at}: seccompProfile must be RuntimeDefault or Localhost (container or pod)")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                errors.append(f"{at}: capabilities.drop must contain ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                errors.append(f"{at}: only NET_BIND_SERVICE may be added")
            if any(p.get("hostPort") for p in c.get("ports") or []):
                errors.append(f"{at}: hostPort")


def pod_spec_of(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template", {}).get("spec")
    return None


def http_probe_path(probe):
    return ((probe or {}).get("httpGet") or {}).get("path")


def sidecar_policy(where, doc, errors):
    pod = pod_spec_of(doc)
    if not pod:
        return
    pod_seccomp = ((pod.get("securityContext") or {}).get("seccompProfile") or {}).get("type")
    for section in ("initContainers", "containers"):
        for c in pod.get(section) or []:
            image = c.get("image", "")
            if not SIDECAR_IMAGE_RE.search(image.split("@")[0]):
                continue
            at = f"{where} {section}/{c.get('name')}"
            repo, _, tag = image.rpartition(":")
            if "/" not in image or not tag or "/" in tag or tag == "latest":
                errors.append(f"{at}: image {image!r} is not a pinned registry image "
                              "(is deploy/components/sidecar-image included?)")
            sc = c.get("securityContext") or {}
            expect = {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False}
            for field, want in expect.items():
                if sc.get(field) is not want:
                    errors.append(f"{at}: securityContext.{field} must be {str(want).lower()}")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                errors.append(f"{at}: securityContext.capabilities.drop must contain ALL")
            if ((sc.get("seccompProfile") or {}).get("type") or pod_seccomp) != "RuntimeDefault":
                errors.append(f"{at}: seccompProfile must be RuntimeDefault")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                if not resources.get(part):
                    errors.append(f"{at}: resources.{part} must be set")
            if any(a == "--allow-cn" or a.startswith("--allow-cn=") for a in sidecar_argv(c)):
                errors.append(f"{at}: authorise callers by workload identity (--allow-uri "
                              "spiffe://cluster.local/ns/NS/sa/NAME), not --allow-cn: any Certificate "
                              "the CA signs can claim a CN")
            argv = sidecar_argv(c)
            if subcommand(argv) in ("server", "client"):
                connections = int(flag_value(argv, "--max-connections") or MAX_CONNECTIONS_DEFAULT)
                memory_fits(at, c, connections, errors)
            if subcommand(argv) == "server":
                admin = flag_value(argv, "--admin-listen") or ADMIN_LISTEN_DEFAULT
                drain_on_rollout(at, pod, c, addr_port(admin), errors)
            serving_app = any(app.get("ports") for app in pod.get("containers") or [])
            if subcommand(argv) == "watch" and serving_app and c.get("restartPolicy") == "Always":
                # The app (nginx) serves callers itself: the same drain keeps a rollout from
                # sending new connections to an app that is quitting.
                admin = flag_value(argv, "--admin-listen") or ADMIN_LISTEN_DEFAULT
                drain_on_rollout(at, pod, c, addr_port(admin), errors, shutdown_grace_s=0)
            long_running = c.get("restartPolicy") == "Always" or section == "containers"
            if long_running:
                if section != "initContainers":
                    errors.append(f"{at}: run the sidecar as a native sidecar "
                                  "(initContainers with restartPolicy: Always)")
                if http_probe_path(c.get("readinessProbe")) != "/readyz":
                    errors.append(f"{at}: readinessProbe must GET /readyz")
                if http_probe_path(c.get("livenessProbe")) != "/healthz":
                    errors.append(f"{at}: livenessProbe must GET /healthz")
                if subcommand(argv) in ("server", "run") and \
                        http_probe_path(c.get("startupProbe")) != "/readyz":
                    errors.append(f"{at}: startupProbe must GET /readyz: the app starts once the "
                                  "sidecar serves, so the first callers are not refused")


# === `run --config`: the config file and the pod that runs it ===

# Keys of a `run --config` file that name files or directories (src/config/raw.rs).
SET_PATH_KEYS = ("cert-dir", "cert", "key", "ca", "peer-ca")
WATCH_PATH_KEYS = ("stage-dir", "pid-file", "webhook-ca")
ADMIN_LISTEN_DEFAULT = "[::]:9901"
SERVER_LISTEN_DEFAULT = "[::]:8443"


# Memory of `server`/`client` (bench/memory.sh, README "Sizing"): about 9 MiB at rest and 50 KiB per
# kept-alive connection, with headroom; `--max-connections` defaults to 10000 per listener.
BASE_MIB = 16
PER_CONNECTION_KIB = 60
MAX_CONNECTIONS_DEFAULT = 10000
# Defaults of `drain-delay` and `shutdown-grace` (src/config/defaults.rs); the examples keep them.
DRAIN_DELAY_S = 5
SHUTDOWN_GRACE_S = 25


def mebibytes(quantity):
    """A Kubernetes memory quantity (64Mi, 1Gi, 100M, bytes) in MiB, or None."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|K|M|G)?", str(quantity))
    if not m:
        return None
    scale = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "K": 1e3 / 2**20, "M": 1e6 / 2**20,
             "G": 1e9 / 2**20, None: 1 / 2**20}[m.group(2)]
    return int(m.group(1)) * scale


def memory_fits(at, c, connections, errors):
    """`limits.memory` of `c` holds `connections` open connections (all listeners together)."""
    limit = mebibytes(((c.get("resources") or {}).get("limits") or {}).get("memory"))
    need = BASE_MIB + connections * PER_CONNECTION_KIB / 1024
    if limit is not None and limit < need:
        errors.append(f"{at}: limits.memory ({limit:.0f} MiB) holds about "
                      f"{int((limit - BASE_MIB) * 1024 / PER_CONNECTION_KIB)} connections, but the "
                      f"connection limits allow {connections} (about {need:.0f} MiB): set "
                      "--max-connections (max-connections) to fit, see the README's Sizing")


def drain_on_rollout(at, pod, c, admin_port, errors, shutdown_grace_s=SHUTDOWN_GRACE_S):
    """A pod whose sidecar or app serves callers: every app container drains the sidecar first
    (its preStop GETs /drain on the admin port: readiness off, the pod leaves the endpoints), and
    the grace period covers drain and shutdown (a `watch` sidecar holds no connections: 0)."""
    for app in pod.get("containers") or []:
        if not app.get("readinessProbe"):
            errors.append(f"{at}: app container {app.get('name')!r} needs its own readinessProbe: "
                          "the sidecar's /readyz says nothing about the app behind it")
        get = (((app.get("lifecycle") or {}).get("preStop") or {}).get("httpGet") or {})
        if get.get("path") != "/drain" or port_number(c, get.get("port")) != admin_port:
            errors.append(f"{at}: app container {app.get('name')!r} needs lifecycle.preStop.httpGet "
                          f"{{path: /drain, port: {admin_port}}}: the sidecar stops being ready before "
                          "the app stops (README \"Drain for pod rollouts\")")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < DRAIN_DELAY_S + shutdown_grace_s + 5:
        errors.append(f"{at}: terminationGracePeriodSeconds {grace} is less than drain-delay "
                      f"({DRAIN_DELAY_S}s) + shutdown-grace ({shutdown_grace_s}s) + the app's shutdown")


def sidecar_argv(c):
    """Our container's arguments after the binary (its `command`, if any, is /mtls-sidecar)."""
    command = [str(a) for a in c.get("command") or []]
    return command[1:] + [str(a) for a in c.get("args") or []]


def flag_value(argv, name):
    for i, a in enumerate(argv):
        if a.startswith(name + "="):
            return a[len(name) + 1:]
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def subcommand(argv):
    """The first argument that is no option (global options take a value: --log-format X)."""
    it = iter(argv)
    for a in it:
        if not a.startswith("-"):
            return a
        if "=" not in a:
            next(it, None)
    return None


def mount_of(c, path):
    """The volumeMount of `c` that holds `path` (the longest mountPath that is a prefix)."""
    found = [m for m in c.get("volumeMounts") or []
             if path == m.get("mountPath") or path.startswith(m.get("mountPath", "").rstrip("/") + "/")]
    return max(found, key=lambda m: len(m["mountPath"]), default=None)


def port_number(c, port):
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def addr_port(addr):
    host, _, port = str(addr).rpartition(":")
    return int(port) if host and port.isdigit() else None


def config_file_of(c, pod, docs, at, errors):
    """The text of the file `--config` names, from the rendered ConfigMap mounted there."""
    argv = sidecar_argv(c)
    path = flag_value(argv, "--config") or next(
        (e.get("value") for e in c.get("env") or [] if e.get("name") == "MTLS_SIDECAR_CONFIG"), None)
    if not path:
        errors.append(f"{at}: `run` needs --config FILE")
        return None
    mount = mount_of(c, path)
    if mount is None or mount["mountPath"] == path:
        errors.append(f"{at}: --config {path}: the container mounts no volume that holds it")
        return None
    if "subPath" in mount or "subPathExpr" in mount:
        errors.append(f"{at}: --config {path}: mount the ConfigMap whole, not with subPath "
                      "(kubelet never updates a subPath mount)")
        return None
    volume = next((v for v in pod.get("volumes") or [] if v.get("name") == mount["name"]), {})
    source = volume.get("configMap")
    if not source:
        errors.append(f"{at}: --config {path}: volume {mount['name']!r} is not a configMap volume")
        return None
    rel = path[len(mount["mountPath"].rstrip("/")) + 1:]
    items = source.get("items")
    key = next((i["key"] for i in items if i.get("path") == rel), None) if items else rel
    config_map = next((d for _, d in docs if d.get("kind") == "ConfigMap"
                       and d["metadata"].get("name") == source.get("name")), None)
    if config_map is None:
        errors.append(f"{at}: --config {path}: ConfigMap {source.get('name')!r} is not part of this "
                      "kustomization (make it with a configMapGenerator next to the example)")
        return None
    text = (config_map.get("data") or {}).get(key) if key else None
    if text is None:
        errors.append(f"{at}: --config {path}: ConfigMap {source.get('name')!r} has no key {key!r} "
                      f"(it has {sorted(config_map.get('data') or {})})")
    return text


def run_config_policy(where, doc, docs, errors):
    """Rule 4 of the module docs, for every sidecar of `doc` that runs `run --config`."""
    pod = pod_spec_of(doc)
    if not pod:
        return
    for section in ("initContainers", "containers"):
        for c in pod.get(section) or []:
            if not SIDECAR_IMAGE_RE.search(c.get("image", "").split("@")[0]):
                continue
            if subcommand(sidecar_argv(c)) != "run":
                continue
            at = f"{where} {section}/{c.get('name')}"
            text = config_file_of(c, pod, docs, at, errors)
            if text is None:
                continue
            try:
                config = yaml.safe_load(text)
            except yaml.YAMLError as e:
                errors.append(f"{at}: the --config file is not YAML: {e}")
                continue
            if not isinstance(config, dict):
                errors.append(f"{at}: the --config file is not a YAML mapping")
                continue
            paths = []
            for name, s in (config.get("sets") or {}).items():
                paths += [(f"sets.{name}.{k}", (s or {}).get(k)) for k in SET_PATH_KEYS]
            for i, w in enumerate(config.get("watch") or []):
                paths += [(f"watch[{i}].{k}", (w or {}).get(k)) for k in WATCH_PATH_KEYS]
            for key, path in paths:
                if path is not None and mount_of(c, str(path)) is None:
                    errors.append(f"{at}: config {key}: {path} is under none of the container's "
                                  "volumeMounts")
            admin = str(config.get("admin-listen", ADMIN_LISTEN_DEFAULT))
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = (c.get(kind) or {}).get("httpGet")
                if get is None:
                    continue
                if admin == "off":
                    errors.append(f"{at}: {kind} probes the admin endpoint, which the config turns off")
                elif port_number(c, get.get("port")) != addr_port(admin):
                    errors.append(f"{at}: {kind} probes port {get.get('port')!r}, but the config's "
                                  f"admin-listen is {admin}")
            for i, listener in enumerate(config.get("listeners") or []):
                if "allow-cn" in (listener or {}):
                    errors.append(f"{at}: config listeners[{i}]: authorise callers by workload "
                                  "identity (allow-uri), not allow-cn: any Certificate the CA signs "
                                  "can claim a CN")
            connections = sum(int((l or {}).get("max-connections", MAX_CONNECTIONS_DEFAULT))
                              for l in config.get("listeners") or [])
            memory_fits(at, c, connections, errors)
            if any((l or {}).get("kind") == "server" for l in config.get("listeners") or []):
                drain_on_rollout(at, pod, c, addr_port(admin), errors)
            ports = {p.get("containerPort") for p in c.get("ports") or []}
            for i, listener in enumerate(config.get("listeners") or []):
                if (listener or {}).get("kind") != "server":
                    continue
                port = addr_port(listener.get("listen", SERVER_LISTEN_DEFAULT))
                if port not in ports:
                    errors.append(f"{at}: config listeners[{i}] listens on port {port}: declare it "
                                  "in the container's `ports`")


def main(paths):
    latest = kv.latest_version()
    versions = sorted({MIN_KUBERNETES, latest}, key=lambda v: tuple(int(x) for x in v.split(".")))
    errors = []
    counts = {"core": 0, "custom": 0}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [(f"{path}: {d.get('kind')}/{(d.get('metadata') or {}).get('name')}", d)
                    for d in yaml.safe_load_all(f) if d]
        if not docs:
            errors.append(f"{path}: the kustomization rendered no objects")
        for where, doc in docs:
            group = doc.get("apiVersion", "").split("/")[0] if "/" in doc.get("apiVersion", "") else ""
            if group in CUSTOM_GROUPS:
                counts["custom"] += 1
                check_custom(doc, where, errors)
                continue
            counts["core"] += 1
            for version in versions:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.SchemaNotFoundError:
                    errors.append(f"{where}: no schema for {doc.get('kind')} {doc.get('apiVersion')} "
                                  f"in Kubernetes {version}")
                except kv.ValidationError as e:
                    loc = ".".join(str(p) for p in e.path) or "(root)"
                    errors.append(f"{where}: Kubernetes {version}: {loc}: {e.message}")
            sidecar_policy(where, doc, errors)
            pod_security_restricted(where, doc, errors)
            run_config_policy(where, doc, docs, errors)
        certificate_issuers_exist(docs, errors)
        certificate_policy(docs, errors)
        namespace_policy(path, docs, errors)
        service_target_ports(docs, errors)
        availability_policy(docs, errors)
    for e in errors:
        print(f"ERROR {e}")
    print(f"validate_deploy: {len(paths)} kustomizations, {counts['core']} core objects "
          f"(strict, Kubernetes {' and '.join(versions)}), {counts['custom']} cert-manager/trust-manager/"
          f"Prometheus Operator objects: {'FAILED' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
