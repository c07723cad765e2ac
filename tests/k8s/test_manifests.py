"""Offline checks of livegate's Kubernetes deployment.

Every kustomization under k8s/ is rendered with the real kustomize (built
into kubectl), every rendered object is validated against the Kubernetes
JSON schemas (kubernetes-validate), and the conventions the deployment
relies on are asserted: probes, security context, TLS and access-token
Secret mounts, the config file and its paths, volumes, device requests,
WebRTC reachability (one media port, UDP and TCP, through hostPort,
NodePort or LoadBalancer, and the address the candidates advertise), the
relay tier (relays that pull from the origin's Service over WHEP, their
PodDisruptionBudget and HorizontalPodAutoscaler), and the monitoring
example (PodMonitor, Grafana dashboard whose queries use only series that
src/http/metrics.rs exposes).
A kustomization may hold several livegate workloads (the relay tier: an
origin and its relays): the per-pod conventions are checked on each one,
through a view of the rendered objects that holds that workload alone.
Run through tests/k8s/run.sh, which installs the pinned tools.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
DEVICE_MANAGER = ROOT / "device_manager" / "device-manager.yaml"
CERTIFICATE = K8S / "examples" / "certificate.yaml"
# Prometheus Operator and Grafana: CRD objects, so rendered on their own.
MONITORING = K8S / "examples" / "monitoring"
DASHBOARD = MONITORING / "livegate-dashboard.json"
METRICS_RS = ROOT / "src" / "http" / "metrics.rs"

# Kubernetes API versions whose schemas every object must satisfy: the
# oldest supported minor and the newest bundled in kubernetes-validate.
K8S_VERSIONS = ["1.30.0", "1.37.0"]

# Deployable kustomizations: what a user applies with `kubectl apply -k`.
DEPLOYABLE = {
    "camera": K8S / "overlays" / "camera",
    "test": K8S / "overlays" / "test",
    "hostnetwork": K8S / "examples" / "hostnetwork",
    "nodeport": K8S / "examples" / "nodeport",
    "loadbalancer": K8S / "examples" / "loadbalancer",
    # Two workloads: the camera as origin, relays pulling it over WHEP.
    "relay": K8S / "overlays" / "relay",
    "relay-autoscaling": K8S / "examples" / "relay-autoscaling",
}
# The relay tier's kustomizations, and the one with the autoscaler.
RELAY_TIER = ("relay", "relay-autoscaling")
RELAY_AUTOSCALING = "relay-autoscaling"
# Everything that must render, the base included.
RENDERABLE = {"base": K8S / "base", **DEPLOYABLE}

NAMESPACE = "livegate"
TLS_SECRET = "livegate-tls"
# Access control: the Secret (created by hand, never committed) holding one
# token per line under each key, mounted as a whole directory.
AUTH_SECRET = "livegate-auth"
AUTH_MOUNT = "/etc/livegate/auth"
AUTH_FILES = {"viewer_token_file": "viewer-tokens", "admin_token_file": "admin-tokens"}
# Settings that name other secret material; when set, they belong on a
# Secret volume too.
SECRET_FILE_SETTINGS = ("jwt_secret_file", "jwks_file")
# The relay tier: the origin's own certificate (for its Service's names),
# whose ca.crt the relays trust, and the relays' token for the origin.
ORIGIN_TLS_SECRET = "livegate-origin-tls"
ORIGIN_TOKEN_SECRET = "livegate-origin-token"
# A stream pulled from another livegate (or any WHEP server).
WHEP_SOURCE = re.compile(r"whep(\+insecure)?:(https://\S+)")
# The gauge the relays' autoscaler reads (src/http/metrics.rs).
VIEWERS_METRIC = "livegate_webrtc_viewers"
# The Markdown that documents the deployment.
GUIDE = ROOT / "docs" / "KUBERNETES.md"
DOCS = [ROOT / "README.md", ROOT / "certs" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
UID = 10001
VIDEO_GID = 44
CONFIG_KEY = "livegate.toml"
# livegate's default single media port (--webrtc-port), UDP and ICE-TCP.
DEFAULT_WEBRTC_PORT = 8189
# The downward-API variable that advertises the node's address.
PUBLIC_IP_ENV = "LIVEGATE_PUBLIC_IP"


# --------------------------------------------------------------- helpers


def kustomize_cmd() -> list[str]:
    """The kustomize to use: $KUSTOMIZE, else kubectl's built-in one."""
    if os.environ.get("KUSTOMIZE"):
        return [os.environ["KUSTOMIZE"], "build"]
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not kubectl:
        pytest.fail("kubectl not found: run tests/k8s/run.sh, which installs it")
    return [kubectl, "kustomize"]


@functools.cache
def render(path: Path) -> tuple[dict, ...]:
    proc = subprocess.run(
        [*kustomize_cmd(), str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kustomize {path} failed:\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    assert docs, f"kustomize {path} rendered nothing"
    return docs


def load_file(path: Path) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text()) if d)


def only(docs, kind: str, name: str | None = None) -> dict:
    found = [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet")


def workload(docs) -> dict:
    found = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(found) == 1, f"expected one livegate workload, found {len(found)}"
    return found[0]


def pod_labels(w: dict) -> dict:
    return w["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict, labels: dict) -> bool:
    """A Service's selector (or a matchLabels) picks pods with these labels."""
    return bool(selector) and selector.items() <= labels.items()


class View(tuple):
    """One workload of a rendered kustomization, the Services that select its
    pods and every object that is neither; `rendered` is the whole output."""

    rendered: tuple

    def __new__(cls, docs, rendered):
        view = super().__new__(cls, docs)
        view.rendered = rendered
        return view


def views(rendered) -> list[View]:
    found = [d for d in rendered if d["kind"] in WORKLOAD_KINDS]
    assert found, "no livegate workload rendered"
    out = []
    for w in found:
        labels = pod_labels(w)
        out.append(View(tuple(
            d for d in rendered
            if d is w
            or (d["kind"] not in WORKLOAD_KINDS
                and (d["kind"] != "Service" or selects(d["spec"].get("selector", {}), labels)))
        ), rendered))
    return out


def view_params(kustomizations: dict) -> list:
    """A pytest.param per workload of each kustomization, named after the
    kustomization (and the workload, when it has several)."""
    params = []
    for name, path in kustomizations.items():
        found = views(render(path))
        for v in found:
            vid = name if len(found) == 1 else f"{name}/{workload(v)['metadata']['name']}"
            params.append(pytest.param(v, id=vid))
    return params


def pod_spec(docs) -> dict:
    return workload(docs)["spec"]["template"]["spec"]


def container(docs) -> dict:
    containers = pod_spec(docs)["containers"]
    named = [c for c in containers if c["name"] == "livegate"]
    assert len(named) == 1, "expected one container named livegate"
    return named[0]


def volume(docs, name: str) -> dict:
    found = [v for v in pod_spec(docs).get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"volume {name} missing"
    return found[0]


def mount_for(docs, path: str) -> tuple[dict, dict]:
    """The volumeMount (and its volume) that holds `path` in the container."""
    p = PurePosixPath(path)
    best = None
    for m in container(docs).get("volumeMounts", []):
        mp = PurePosixPath(m["mountPath"])
        if p == mp or mp in p.parents:
            if best is None or len(str(mp)) > len(best["mountPath"]):
                best = m
    assert best is not None, f"{path} is not on any volume (the root fs is read-only)"
    return best, volume(docs, best["name"])


def config_mount(docs) -> tuple[dict, dict, dict]:
    """(ConfigMap, its volumeMount, the path passed with --config)."""
    c = container(docs)
    args = [*c.get("command", []), *c.get("args", [])]
    path = None
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            path = args[i + 1]
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
    assert path, f"container args {args} do not pass --config"
    m, v = mount_for(docs, path)
    assert "configMap" in v, f"--config {path} is not on a ConfigMap volume"
    assert "subPath" not in m, "mount the ConfigMap directory, not a subPath"
    key = str(PurePosixPath(path).relative_to(m["mountPath"]))
    for item in v["configMap"].get("items", []):
        if item["path"] == key:
            key = item["key"]
    cm = only(docs, "ConfigMap", v["configMap"]["name"])
    assert key in cm.get("data", {}), f"ConfigMap {cm['metadata']['name']} has no {key}"
    return cm, m, {"path": path, "key": key}


def livegate_config(docs) -> dict:
    cm, _, ref = config_mount(docs)
    return tomllib.loads(cm["data"][ref["key"]])


def streams(docs) -> list[dict]:
    return livegate_config(docs).get("stream", [])


def is_relay(docs) -> bool:
    """Every stream comes from another livegate over WHEP: no camera of its own."""
    found = streams(docs)
    return bool(found) and all(WHEP_SOURCE.fullmatch(s["source"]) for s in found)


def upstream_services(rendered) -> set[str]:
    """The Services that relays in this output pull their streams from."""
    names = set()
    for v in views(rendered):
        if is_relay(v):
            for s in streams(v):
                host = urlsplit(WHEP_SOURCE.fullmatch(s["source"]).group(2)).hostname
                names.add(host.split(".")[0])
    return names


def is_origin(docs) -> bool:
    """This view's workload is behind a Service that relays pull from."""
    ups = upstream_services(docs.rendered) if isinstance(docs, View) else set()
    return any(d["kind"] == "Service" and d["metadata"]["name"] in ups for d in docs)


def port_range(spec: str) -> range:
    lo, hi = (int(x) for x in spec.split("-"))
    return range(lo, hi + 1)


def container_port(docs, port) -> int:
    if isinstance(port, int):
        return port
    for p in container(docs).get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    pytest.fail(f"named port {port} is not declared by the container")


def listen_port(cfg: dict) -> int:
    return int(cfg.get("listen", "0.0.0.0:8443").rsplit(":", 1)[1])


def media_ports(cfg: dict) -> tuple[int, int] | None:
    """(UDP, TCP) of the single-port mode; None in the per-viewer range mode."""
    if "webrtc_ports" in cfg:
        assert "webrtc_port" not in cfg, "webrtc_port and webrtc_ports exclude each other"
        return None
    udp = int(cfg.get("webrtc_port", DEFAULT_WEBRTC_PORT))
    return udp, int(cfg.get("webrtc_tcp_port", udp))


def declared_port(docs, protocol: str, number: int) -> dict:
    found = [
        p
        for p in container(docs).get("ports", [])
        if p.get("protocol", "TCP") == protocol and p["containerPort"] == number
    ]
    assert len(found) == 1, f"the container declares no (or several) {number}/{protocol}"
    return found[0]


def env_var(docs, name: str) -> dict | None:
    found = [e for e in container(docs).get("env", []) if e["name"] == name]
    assert len(found) <= 1, f"env {name} set twice"
    return found[0] if found else None


def service_port(svc: dict, docs, protocol: str, number: int) -> dict:
    """The Service port that leads to the container's `number`/`protocol`."""
    found = [
        p
        for p in svc["spec"]["ports"]
        if p.get("protocol", "TCP") == protocol
        and container_port(docs, p.get("targetPort", p["port"])) == number
    ]
    assert len(found) == 1, f"Service {svc['metadata']['name']} has no port to {number}/{protocol}"
    return found[0]


def walk(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path + (k,), v
            yield from walk(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, path + (i,))


def object_ids():
    for name, path in RENDERABLE.items():
        for doc in render(path):
            yield pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}")
    for doc in load_file(DEVICE_MANAGER):
        yield pytest.param(doc, id=f"device-manager:{doc['kind']}/{doc['metadata']['name']}")


# ---------------------------------------------------- rendering and schema


@pytest.mark.parametrize("name", RENDERABLE)
def test_renders(name):
    docs = render(RENDERABLE[name])
    ids = [(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), f"duplicate objects in {name}: {ids}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", list(object_ids()))
def test_schema(doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        pytest.fail(f"invalid against Kubernetes {version}: {where}: {e.message}")


def test_certificate_example():
    (cert,) = load_file(CERTIFICATE)
    assert cert["apiVersion"] == "cert-manager.io/v1" and cert["kind"] == "Certificate"
    assert cert["metadata"]["namespace"] == NAMESPACE
    assert cert["spec"]["secretName"] == TLS_SECRET
    assert cert["spec"]["issuerRef"]["name"]
    assert cert["spec"].get("dnsNames") or cert["spec"].get("ipAddresses")
    # A CRD object: it must not be in an overlay, which would then fail on
    # clusters without cert-manager.
    for name, path in DEPLOYABLE.items():
        assert not any(d["kind"] == "Certificate" for d in render(path)), name


# --------------------------------------------------------- conventions


@pytest.fixture(params=view_params(DEPLOYABLE))
def overlay(request):
    """One livegate workload of a deployable kustomization (see View)."""
    return request.param


def test_namespace_and_labels(overlay):
    ns = only(overlay, "Namespace")
    assert ns["metadata"]["name"] == NAMESPACE
    for d in overlay:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]["name"]
        labels = d["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "livegate", d["metadata"]["name"]


def test_single_owner_workload(overlay):
    w = workload(overlay)
    selector = w["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels(w).items()
    if is_relay(overlay):
        # Relays own nothing: interchangeable replicas (the count left to an
        # autoscaler when absent), replaced one at a time.
        assert w["kind"] == "Deployment"
        assert w["spec"].get("replicas", 2) >= 2, "one relay is no tier"
        strategy = w["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        if any("hostPort" in p for p in container(overlay).get("ports", [])):
            # The successor cannot start on a node whose ports the old one holds.
            assert strategy["rollingUpdate"].get("maxSurge") in (0, "0%"), "hostPort: maxSurge 0"
        return
    if w["kind"] == "Deployment":
        assert w["spec"].get("replicas", 1) == 1, "one camera, one gateway"
        assert w["spec"]["strategy"]["type"] == "Recreate"


def test_image(overlay):
    image = container(overlay)["image"]
    assert "/" in image and ":" in image.rsplit("/", 1)[1], f"image {image} lacks registry or tag"
    assert not image.endswith(":latest"), "pin a tag, not :latest"


@pytest.mark.parametrize("probe,path", [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")])
def test_probes(overlay, probe, path):
    c = container(overlay)
    assert probe in c, f"{probe} missing"
    get = c[probe].get("httpGet")
    assert get, f"{probe} must be an httpGet probe"
    assert get["path"] == path
    assert get.get("scheme") == "HTTPS", f"{probe} must use scheme HTTPS"
    assert container_port(overlay, get["port"]) == listen_port(livegate_config(overlay))


def test_startup_probe_if_any(overlay):
    probe = container(overlay).get("startupProbe")
    if probe:
        assert probe["httpGet"]["path"] == "/healthz"
        assert probe["httpGet"].get("scheme") == "HTTPS"


def test_security_context(overlay):
    pod = pod_spec(overlay).get("securityContext", {})
    sc = container(overlay).get("securityContext", {})

    def eff(key):
        return sc.get(key, pod.get(key))

    assert eff("runAsNonRoot") is True
    assert eff("runAsUser") == UID
    assert sc.get("readOnlyRootFilesystem") is True
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("privileged", False) is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    assert not sc.get("capabilities", {}).get("add"), "no capabilities are needed"
    assert eff("seccompProfile") == {"type": "RuntimeDefault"}
    if is_relay(overlay):
        assert VIDEO_GID not in pod.get("supplementalGroups", []), "a relay opens no device"
    else:
        assert VIDEO_GID in pod.get("supplementalGroups", []), "video group for /dev/videoN"


def test_resources(overlay):
    res = container(overlay)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= res.get(kind, {}).keys(), f"{kind} cpu/memory"


def test_no_privileged_anywhere():
    docs = [d for p in RENDERABLE.values() for d in render(p)] + list(load_file(DEVICE_MANAGER))
    for d in docs:
        for path, value in walk(d):
            if path and path[-1] == "privileged":
                assert value is False, f"{d['kind']}/{d['metadata']['name']}: privileged at {path}"


def test_tls_secret_mount_matches_config(overlay):
    cfg = livegate_config(overlay)
    assert not cfg.get("no_tls"), "the deployment serves HTTPS"
    secret_mounts = []
    # A relay tier's origin has its own certificate, for the name the relays dial.
    want = ORIGIN_TLS_SECRET if is_origin(overlay) else TLS_SECRET
    for key, secret_key in (("tls_cert", "tls.crt"), ("tls_key", "tls.key")):
        assert key in cfg, f"{key} missing from the config"
        m, v = mount_for(overlay, cfg[key])
        assert "secret" in v, f"{key} {cfg[key]} is not on a Secret volume"
        assert v["secret"]["secretName"] == want
        assert m.get("readOnly") is True, "mount the TLS Secret read-only"
        # A subPath mount is a copy made at start: the kubelet's "..data"
        # symlink swap on renewal would never reach the pod.
        assert "subPath" not in m and "subPathExpr" not in m, "no subPath for the TLS Secret"
        rel = str(PurePosixPath(cfg[key]).relative_to(m["mountPath"]))
        items = {i["path"]: i["key"] for i in v["secret"].get("items", [])}
        assert items.get(rel, rel) == secret_key, f"{key} points at {rel}, not {secret_key}"
        secret_mounts.append(m["mountPath"])
    assert len(set(secret_mounts)) == 1


@pytest.mark.parametrize("docs", view_params(RENDERABLE))
def test_auth_secret_mount_matches_config(docs):
    """Both token files are configured, on the livegate-auth directory mount."""
    cfg = livegate_config(docs)
    pod_sc = pod_spec(docs).get("securityContext", {})
    for key, secret_key in AUTH_FILES.items():
        assert key in cfg, f"{key} missing from the config: access control must be on"
        m, v = mount_for(docs, cfg[key])
        assert "secret" in v, f"{key} {cfg[key]} is not on a Secret volume"
        assert v["secret"]["secretName"] == AUTH_SECRET
        assert m["mountPath"] == AUTH_MOUNT, f"the {AUTH_SECRET} Secret belongs at {AUTH_MOUNT}"
        assert m.get("readOnly") is True, f"mount the {AUTH_SECRET} Secret read-only"
        # Only a directory mount sees the kubelet's "..data" symlink swap, so
        # rotated tokens reach livegate without a restart.
        assert "subPath" not in m and "subPathExpr" not in m, f"no subPath for {AUTH_SECRET}"
        assert not v["secret"].get("optional"), "without its tokens the pod must not start"
        rel = str(PurePosixPath(cfg[key]).relative_to(m["mountPath"]))
        items = {i["path"]: i["key"] for i in v["secret"].get("items", [])}
        if items:
            assert rel in items, f"{key} {rel} is not among the Secret's items"
        assert items.get(rel, rel) == secret_key, f"{key} points at {rel}, not the key {secret_key}"
        mode = v["secret"].get("defaultMode", 0o644)
        assert mode & 0o007 == 0, f"tokens must not be world-readable (defaultMode {mode:o})"
        assert mode & 0o040 and pod_sc.get("fsGroup") is not None, (
            "livegate reads the tokens through the group (fsGroup)"
        )
    assert cfg["viewer_token_file"] != cfg["admin_token_file"]


@pytest.mark.parametrize("docs", view_params(RENDERABLE))
def test_other_secret_files_on_secret_volumes(docs):
    """JWT keys, when an overlay uses them, live on a Secret directory mount too,
    and so do a stream's token for its origin and the CA it trusts."""
    cfg = livegate_config(docs)
    files = [(key, cfg[key]) for key in SECRET_FILE_SETTINGS if key in cfg]
    files += [(f"stream {s['name']}: {key}", s[key]) for s in streams(docs)
              for key in ("token_file", "source_ca") if key in s]
    for what, path in files:
        m, v = mount_for(docs, path)
        assert "secret" in v, f"{what} {path} is not on a Secret volume"
        assert m.get("readOnly") is True, what
        assert "subPath" not in m and "subPathExpr" not in m, f"{what}: no subPath (rotation)"
        assert v["secret"].get("defaultMode", 0o644) & 0o007 == 0, f"{what}: not world-readable"


@pytest.mark.parametrize("docs", view_params(RENDERABLE))
def test_no_secrets_committed(docs):
    """Certificates and tokens are created by hand, never kept in k8s/."""
    assert not [d["metadata"]["name"] for d in docs.rendered if d["kind"] == "Secret"], (
        "no Secret in the manifests: livegate-tls and livegate-auth are created by hand"
    )
    cfg = livegate_config(docs)
    for key in ("viewer_token", "admin_token"):
        assert key not in cfg, f"{key} in the ConfigMap: tokens belong in the {AUTH_SECRET} Secret"
    for s in streams(docs):
        assert "token" not in s, f"stream {s['name']}: a token in the ConfigMap (use token_file)"
        assert not re.search(r"[?&]token=|//[^/@]+@", s["source"]), f"credentials in {s['source']}"
    c = container(docs)
    for env in c.get("env", []):
        name_ = env["name"]
        if name_.startswith("LIVEGATE_") and ("TOKEN" in name_ or "JWT" in name_):
            assert "value" not in env, f"{name_} holds a secret in plain text"
    args = [*c.get("command", []), *c.get("args", [])]
    assert not [a for a in args if "token" in a or "jwt" in a], "no tokens in container args"


def test_config_mounted_and_passed(overlay):
    cm, m, ref = config_mount(overlay)
    assert m.get("readOnly") is True
    # The settings live in the ConfigMap, not in flags.
    c = container(overlay)
    flags = [a for a in c.get("args", []) if a.startswith("--") and not a.startswith("--config")]
    assert not flags, f"settings belong in {CONFIG_KEY}, not args: {flags}"
    assert ref["key"] == CONFIG_KEY
    # configMapGenerator appends a content hash, so edits roll the pod (the
    # relay tier's halves add -origin and -relay before it).
    assert re.fullmatch(r"livegate-config(-origin|-relay)?-[a-z0-9]{10}", cm["metadata"]["name"])


def test_writable_dirs(overlay):
    cfg = livegate_config(overlay)
    assert "hls_dir" in cfg, "hls_dir must be set (default is a temp dir)"
    _, v = mount_for(overlay, cfg["hls_dir"])
    assert v.get("emptyDir", {}).get("medium") == "Memory", "HLS segments belong in RAM"
    assert v["emptyDir"].get("sizeLimit"), "a Memory emptyDir needs a sizeLimit"
    assert "state_dir" in cfg
    _, v = mount_for(overlay, cfg["state_dir"])
    assert "emptyDir" in v, "state_dir must be a writable emptyDir"
    # GStreamer's registry cache and temp files.
    _, v = mount_for(overlay, "/tmp")
    assert "emptyDir" in v


def test_service(overlay):
    svc = only(overlay, "Service")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    https = ports["https"]
    assert https["port"] == 443
    assert container_port(overlay, https["targetPort"]) == listen_port(livegate_config(overlay))
    pod_labels = workload(overlay)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_streams_and_devices(overlay):
    cfg = livegate_config(overlay)
    streams = cfg.get("stream", [])
    assert streams, "at least one [[stream]]"
    limits = container(overlay)["resources"].get("limits", {})
    requested = {k for k in limits if k.startswith("smarter-devices/")}
    needed = set()
    for s in streams:
        m = re.fullmatch(r"v4l2:/dev/(video\d+)", s["source"])
        if m:
            needed.add(f"smarter-devices/{m.group(1)}")
    assert requested == needed, f"device requests {requested} != v4l2 sources {needed}"
    for r in requested:
        assert str(limits[r]) == "1"
    if requested:
        # The device plugin only runs on nodes with this label.
        assert pod_spec(overlay).get("nodeSelector", {}).get("smarter-device-manager") == "enabled"


def test_webrtc_ports_declared(overlay):
    """The single media port is declared (UDP and TCP) and named for Services."""
    cfg = livegate_config(overlay)
    ports = media_ports(cfg)
    if ports is None:
        # One UDP port per viewer: only hostNetwork (or one hostPort each).
        rng = port_range(cfg["webrtc_ports"])
        assert cfg.get("max_viewers", 200) <= len(rng), "one UDP port per viewer"
        spec = pod_spec(overlay)
        host_udp = {p["hostPort"] for p in container(overlay).get("ports", [])
                    if p.get("protocol") == "UDP" and "hostPort" in p}
        assert spec.get("hostNetwork") or host_udp == set(rng), "a port range needs the node's network"
        return
    udp, tcp = ports
    assert declared_port(overlay, "UDP", udp)["name"] == "webrtc-udp"
    assert declared_port(overlay, "TCP", tcp)["name"] == "webrtc-tcp"


def test_webrtc_host_ports(overlay):
    """A port published on the node keeps its number: the candidate carries it."""
    cfg = livegate_config(overlay)
    spec = pod_spec(overlay)
    published = [p for p in container(overlay).get("ports", []) if "hostPort" in p]
    if spec.get("hostNetwork"):
        assert spec.get("dnsPolicy") == "ClusterFirstWithHostNet"
    for p in published:
        assert p["hostPort"] == p["containerPort"], f"hostPort {p['hostPort']} != containerPort"
    ports = media_ports(cfg)
    if not published or ports is None:
        return
    udp, tcp = ports
    assert declared_port(overlay, "UDP", udp).get("hostPort") == udp
    assert declared_port(overlay, "TCP", tcp).get("hostPort") == tcp
    assert declared_port(overlay, "TCP", listen_port(cfg)).get("hostPort"), "HTTPS on the node too"


def advertised_address(overlay) -> str:
    """Where the candidates' address comes from: 'hostIP', 'config' or 'pod'."""
    cfg = livegate_config(overlay)
    env = env_var(overlay, PUBLIC_IP_ENV)
    if env:
        return "hostIP"
    return "config" if cfg.get("public_ip") else "pod"


def test_public_ip_source(overlay):
    """LIVEGATE_PUBLIC_IP, where set, is the node's address from the downward API."""
    cfg = livegate_config(overlay)
    env = env_var(overlay, PUBLIC_IP_ENV)
    if env is not None:
        assert "value" not in env, f"{PUBLIC_IP_ENV} comes from the downward API"
        assert env["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
        # flags > env > file: a public_ip in the ConfigMap would be ignored.
        assert "public_ip" not in cfg, f"{PUBLIC_IP_ENV} overrides public_ip in {CONFIG_KEY}"
    others = [e["name"] for e in container(overlay).get("env", [])
              if e["name"].startswith("LIVEGATE_") and e["name"] != PUBLIC_IP_ENV]
    assert not others, f"settings belong in {CONFIG_KEY}: {others}"


def test_webrtc_reachable_from_outside(overlay):
    """How browsers outside reach the media port, and what the candidates say."""
    cfg = livegate_config(overlay)
    ports = media_ports(cfg)
    if ports is None:
        return
    udp, tcp = ports
    spec = pod_spec(overlay)
    svc = only(overlay, "Service")
    kind = svc["spec"].get("type", "ClusterIP")
    on_node = spec.get("hostNetwork") or any("hostPort" in p for p in container(overlay).get("ports", []))
    address = advertised_address(overlay)
    if on_node:
        # The node's own port: advertise the node (or a NAT in front of it).
        # The Service may then carry HTTPS alone (the relays' viewers' Service).
        assert address in ("hostIP", "config"), "a host port needs the node's address advertised"
        return
    svc_udp = service_port(svc, overlay, "UDP", udp)
    svc_tcp = service_port(svc, overlay, "TCP", tcp)
    if kind == "NodePort":
        assert svc_udp.get("nodePort") == udp and svc_tcp.get("nodePort") == tcp, (
            "the nodePort must be webrtc_port's number: the candidate carries it"
        )
        assert address in ("hostIP", "config")
        if address == "hostIP":
            # Only the advertised node (the pod's) must answer, unmasqueraded.
            assert svc["spec"].get("externalTrafficPolicy") == "Local"
    elif kind == "LoadBalancer":
        assert svc_udp["port"] == udp and svc_tcp["port"] == tcp, (
            "the load balancer's port must be webrtc_port's number"
        )
        assert address == "config", "advertise the load balancer's address (public_ip)"
    else:
        # ClusterIP: browsers that route to pod IPs only; the pod IP is advertised.
        assert kind == "ClusterIP"
        assert address == "pod", "public_ip without a way in from outside"
        assert svc_udp["port"] == udp and svc_tcp["port"] == tcp


def test_pod_security_level(overlay):
    """The namespace enforces the strictest Pod Security level its pods meet."""
    labels = only(overlay, "Namespace")["metadata"].get("labels", {})
    level = labels.get("pod-security.kubernetes.io/enforce")
    host = any(
        pod_spec(v).get("hostNetwork") or any("hostPort" in p for p in container(v).get("ports", []))
        for v in views(overlay.rendered)
    )
    assert level == ("privileged" if host else "restricted")


def test_every_service_selects_one_workload():
    """No Service selects nothing, or the pods of two workloads (an origin and its relays)."""
    for name, path in DEPLOYABLE.items():
        docs = render(path)
        for svc in (d for d in docs if d["kind"] == "Service"):
            chosen = [w["metadata"]["name"] for w in docs if w["kind"] in WORKLOAD_KINDS
                      and selects(svc["spec"].get("selector", {}), pod_labels(w))]
            assert len(chosen) == 1, f"{name}: Service {svc['metadata']['name']} selects {chosen}"


# ---------------------------------------------------- overlay specifics


def test_base_uses_the_pod_network():
    docs = render(RENDERABLE["base"])
    cfg = livegate_config(docs)
    assert cfg.get("webrtc_port") == DEFAULT_WEBRTC_PORT and "webrtc_ports" not in cfg
    spec = pod_spec(docs)
    assert not spec.get("hostNetwork"), "no hostNetwork in the base"
    assert not any("hostPort" in p for p in container(docs).get("ports", [])), "no hostPort in the base"
    assert env_var(docs, PUBLIC_IP_ENV) is None and "public_ip" not in cfg
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in container(docs)["ports"]}
    assert ports == {("https", 8443, "TCP"), ("webrtc-udp", 8189, "UDP"), ("webrtc-tcp", 8189, "TCP")}
    svc = only(docs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    svc_ports = {(p["name"], p["port"], p["protocol"], p["targetPort"]) for p in svc["spec"]["ports"]}
    assert svc_ports == {("https", 443, "TCP", "https"), ("webrtc-udp", 8189, "UDP", "webrtc-udp"),
                         ("webrtc-tcp", 8189, "TCP", "webrtc-tcp")}
    labels = only(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_camera_overlay():
    docs = render(DEPLOYABLE["camera"])
    cfg = livegate_config(docs)
    assert [s["source"] for s in cfg["stream"]] == ["v4l2:/dev/video0"]
    assert container(docs)["resources"]["limits"]["smarter-devices/video0"] in ("1", 1)
    spec = pod_spec(docs)
    assert not spec.get("hostNetwork"), "hostPort, not hostNetwork"
    assert spec["nodeSelector"]["smarter-device-manager"] == "enabled"
    published = {(p["hostPort"], p["protocol"]) for p in container(docs)["ports"] if "hostPort" in p}
    assert published == {(8443, "TCP"), (8189, "UDP"), (8189, "TCP")}
    assert env_var(docs, PUBLIC_IP_ENV)["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


def test_hostnetwork_example():
    docs = render(DEPLOYABLE["hostnetwork"])
    spec = pod_spec(docs)
    assert spec.get("hostNetwork") is True
    assert spec.get("dnsPolicy") == "ClusterFirstWithHostNet"
    assert only(docs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_nodeport_and_loadbalancer_examples():
    np = render(DEPLOYABLE["nodeport"])
    assert only(np, "Service")["spec"]["type"] == "NodePort"
    assert env_var(np, PUBLIC_IP_ENV)["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    # The default NodePort range is 30000-32767.
    for p in only(np, "Service")["spec"]["ports"]:
        assert 30000 <= p["nodePort"] <= 32767, p
    lb = render(DEPLOYABLE["loadbalancer"])
    assert only(lb, "Service")["spec"]["type"] == "LoadBalancer"
    assert env_var(lb, PUBLIC_IP_ENV) is None and livegate_config(lb)["public_ip"]
    for docs in (np, lb):
        spec = pod_spec(docs)
        assert not spec.get("hostNetwork")
        assert not any("hostPort" in p for p in container(docs)["ports"])


def test_test_overlay_runs_anywhere():
    docs = render(DEPLOYABLE["test"])
    cfg = livegate_config(docs)
    assert [s["source"] for s in cfg["stream"]] == ["test"]
    res = container(docs)["resources"]
    assert not any(k.startswith("smarter-devices/") for k in [*res.get("limits", {}), *res.get("requests", {})])
    spec = pod_spec(docs)
    assert not spec.get("hostNetwork"), "the test overlay uses the pod network"
    assert not spec.get("nodeSelector"), "the test overlay schedules anywhere"


# ------------------------------------------------------ the relay tier


def tier(name: str) -> tuple[View, View]:
    """(origin, relays) of a relay-tier kustomization."""
    found = views(render(DEPLOYABLE[name]))
    relays = [v for v in found if is_relay(v)]
    origins = [v for v in found if not is_relay(v)]
    assert len(relays) == 1 and len(origins) == 1, (
        f"{name}: expected one origin and one relay workload, found "
        f"{[workload(v)['metadata']['name'] for v in found]}"
    )
    return origins[0], relays[0]


def replicas_floor(rendered, w: dict) -> int:
    """The fewest replicas a workload runs: its own count, or its autoscaler's minimum."""
    for hpa in (d for d in rendered if d["kind"] == "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"]:
            return hpa["spec"].get("minReplicas", 1)
    return w["spec"].get("replicas", 1)


@pytest.mark.parametrize("name", RELAY_TIER)
def test_relay_tier_topology(name):
    """The camera stays the one origin; the relays are a Deployment of their own."""
    origin, relays = tier(name)
    o, r = workload(origin), workload(relays)
    assert o["kind"] == r["kind"] == "Deployment"
    assert [s["source"] for s in streams(origin)] == ["v4l2:/dev/video0"], "the camera is the origin"
    assert pod_labels(o)["app.kubernetes.io/component"] == "gateway"
    assert pod_labels(r)["app.kubernetes.io/component"] == "relay"
    # Neither selects the other's pods.
    assert not selects(o["spec"]["selector"]["matchLabels"], pod_labels(r))
    assert not selects(r["spec"]["selector"]["matchLabels"], pod_labels(o))
    assert replicas_floor(relays.rendered, r) >= 2


@pytest.mark.parametrize("name", RELAY_TIER)
def test_relays_pull_from_the_origin_service(name):
    """Each relay stream's whep: URL names a Service of this output, in front of
    the origin's HTTPS port, and a stream the origin has; the relay trusts the
    CA of the origin's certificate and carries a viewer token of the origin."""
    origin, relays = tier(name)
    rendered = relays.rendered
    origin_cfg = livegate_config(origin)
    for s in streams(relays):
        m = WHEP_SOURCE.fullmatch(s["source"])
        assert m, f"relay stream {s['name']}: {s['source']} is not a whep: source"
        url = urlsplit(m.group(2))
        host = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?", url.hostname or "")
        assert host, f"{url.hostname}: the origin's in-cluster Service name, SERVICE.NAMESPACE.svc[.cluster.local]"
        svc_name, namespace = host.group(1), host.group(2)
        found = [d for d in rendered if d["kind"] == "Service" and d["metadata"]["name"] == svc_name]
        assert found, f"relays pull from Service {svc_name}, which {name} does not render"
        svc = found[0]
        assert svc["metadata"]["namespace"] == namespace, f"Service {svc_name} is not in {namespace}"
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", "the origin stays inside the cluster"
        # The Service leads to the origin's pods, not back to the relays.
        assert selects(svc["spec"]["selector"], pod_labels(workload(origin))), f"{svc_name} misses the origin"
        assert not selects(svc["spec"]["selector"], pod_labels(workload(relays))), f"{svc_name} selects relays"
        port = [p for p in svc["spec"]["ports"]
                if p["port"] == (url.port or 443) and p.get("protocol", "TCP") == "TCP"]
        assert len(port) == 1, f"Service {svc_name} has no TCP port {url.port or 443}"
        assert container_port(origin, port[0]["targetPort"]) == listen_port(origin_cfg), "not HTTPS"
        assert re.fullmatch(r"/whep/[\w-]+", url.path), f"{url.path}: not /whep/STREAM"
        upstream = url.path.removeprefix("/whep/")
        assert upstream in [o["name"] for o in origin_cfg["stream"]], f"the origin has no stream {upstream}"
        assert not url.query and not url.username, "credentials belong in token_file"
        # Verified TLS: the CA that signs the origin's certificate, and only that
        # key of the origin's TLS Secret (never its private key).
        assert not m.group(1), "whep+insecure: skips the certificate check; name the CA (source_ca)"
        assert "source_ca" in s, f"relay stream {s['name']}: no source_ca"
        mount, vol = mount_for(relays, s["source_ca"])
        origin_tls = mount_for(origin, origin_cfg["tls_cert"])[1]["secret"]["secretName"]
        assert vol["secret"]["secretName"] == origin_tls == ORIGIN_TLS_SECRET
        items = vol["secret"].get("items", [])
        assert [i["key"] for i in items] == ["ca.crt"], "project only ca.crt of the origin's TLS Secret"
        assert PurePosixPath(s["source_ca"]).relative_to(mount["mountPath"]) == PurePosixPath(items[0]["path"])
        # The origin has access control on: the relay is one of its viewers.
        assert "viewer_token_file" in origin_cfg
        assert "token_file" in s, f"relay stream {s['name']}: no token_file for the origin"
        mount, vol = mount_for(relays, s["token_file"])
        assert vol["secret"]["secretName"] == ORIGIN_TOKEN_SECRET
        assert mount["mountPath"] != AUTH_MOUNT
        rel = str(PurePosixPath(s["token_file"]).relative_to(mount["mountPath"]))
        items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])}
        assert items.get(rel, rel) == "token", f"token_file points at {rel}, not the key token"


@pytest.mark.parametrize("name", RELAY_TIER)
def test_relays_have_no_camera(name):
    origin, relays = tier(name)
    res = container(relays)["resources"]
    asked = [k for k in [*res.get("requests", {}), *res.get("limits", {})] if k.startswith("smarter-devices/")]
    assert not asked, f"relays request devices {asked}"
    spec = pod_spec(relays)
    assert "smarter-device-manager" not in spec.get("nodeSelector", {}), "relays may run on any node"
    assert not [v["name"] for v in spec.get("volumes", []) if "hostPath" in v], "no hostPath"
    assert not [m for m in container(relays).get("volumeMounts", []) if m["mountPath"].startswith("/dev")]
    assert not [s for s in streams(relays) if not WHEP_SOURCE.fullmatch(s["source"])]
    # The origin keeps its camera, on the pod network: relays reach its pod IP.
    assert container(origin)["resources"]["limits"].get("smarter-devices/video0") in ("1", 1)
    assert not any("hostPort" in p for p in container(origin)["ports"]), "the origin is in-cluster only"
    assert advertised_address(origin) == "pod"


@pytest.mark.parametrize("name", RELAY_TIER)
def test_relay_viewer_service(name):
    """Viewers reach the relays' HTTPS through one Service; media through each relay's node."""
    _, relays = tier(name)
    svc = only(relays, "Service")
    assert svc["metadata"]["name"] == workload(relays)["metadata"]["name"]
    ports = svc["spec"]["ports"]
    assert [(p["name"], p["port"], p.get("protocol", "TCP")) for p in ports] == [("https", 443, "TCP")]
    assert container_port(relays, ports[0]["targetPort"]) == listen_port(livegate_config(relays))
    assert svc["spec"]["type"] == "LoadBalancer"
    # Nodes without a relay do not answer, and relays see viewers' addresses.
    assert svc["spec"].get("externalTrafficPolicy") == "Local"
    assert svc["spec"].get("sessionAffinity") == "ClientIP", "WHEP sessions and HLS are per relay"
    udp, tcp = media_ports(livegate_config(relays))
    assert declared_port(relays, "UDP", udp).get("hostPort") == udp
    assert declared_port(relays, "TCP", tcp).get("hostPort") == tcp
    assert advertised_address(relays) == "hostIP"


@pytest.mark.parametrize("name", RELAY_TIER)
def test_relay_pdb(name):
    origin, relays = tier(name)
    pdb = only(relays.rendered, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert set(pdb["spec"]["selector"]) == {"matchLabels"}
    match = pdb["spec"]["selector"]["matchLabels"]
    assert selects(match, pod_labels(workload(relays))), "the budget selects no relay"
    assert not selects(match, pod_labels(workload(origin))), "the budget covers the origin"
    spec = pdb["spec"]
    assert ("maxUnavailable" in spec) != ("minAvailable" in spec)
    floor = replicas_floor(relays.rendered, workload(relays))
    if "maxUnavailable" in spec:
        assert spec["maxUnavailable"] == 1
    else:
        assert isinstance(spec["minAvailable"], int) and 1 <= spec["minAvailable"] < floor


def test_relay_autoscaler():
    """The HPA scales the relay Deployment on the viewers gauge livegate exports."""
    origin, relays = tier(RELAY_AUTOSCALING)
    rendered = relays.rendered
    hpa = only(rendered, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["metadata"]["namespace"] == NAMESPACE
    r = workload(relays)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": r["kind"], "name": r["metadata"]["name"]}
    assert "replicas" not in r["spec"], "the HPA owns the relays' count"
    assert workload(origin)["spec"].get("replicas") == 1, "the camera is never scaled"
    low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
    assert 2 <= low <= high
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [p["metric"]["name"] for p in pods] == [VIEWERS_METRIC]
    assert VIEWERS_METRIC in exposed_series(), f"{METRICS_RS.name} no longer exports {VIEWERS_METRIC}"
    assert not VIEWERS_METRIC.endswith("_total"), "a gauge, not a counter"
    target = pods[0]["target"]
    assert target["type"] == "AverageValue"
    per_relay = livegate_config(relays).get("max_viewers", 200)
    assert 0 < int(target["averageValue"]) < per_relay, "scale out before a relay is full"
    # Each relay is one viewer of the origin per stream it pulls from it.
    pulls = len(streams(relays))
    assert livegate_config(origin).get("max_viewers", 200) >= high * pulls, (
        "the origin's max_viewers must admit maxReplicas relays"
    )
    # Otherwise the example is the overlay: the autoscaler needs a metrics
    # adapter, so the overlay itself has none.
    overlay = render(DEPLOYABLE["relay"])
    assert not [d for d in overlay if d["kind"] == "HorizontalPodAutoscaler"]
    ids = lambda docs: {(d["kind"], d["metadata"]["name"]) for d in docs}  # noqa: E731
    assert ids(rendered) == ids(overlay) | {("HorizontalPodAutoscaler", hpa["metadata"]["name"])}


# ------------------------------------------------------ device manager


def test_device_manager():
    docs = load_file(DEVICE_MANAGER)
    ns = only(docs, "Namespace")["metadata"]["name"]
    cm = only(docs, "ConfigMap")
    ds = only(docs, "DaemonSet")
    assert cm["metadata"]["namespace"] == ns and ds["metadata"]["namespace"] == ns
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"smarter-device-manager": "enabled"}
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec.get("hostNetwork") is True
    assert spec.get("tolerations")
    (c,) = spec["containers"]
    assert c["image"] == "registry.gitlab.com/arm-research/smarter/smarter-device-manager:v1.20.11"
    assert {"cpu", "memory"} <= c["resources"]["limits"].keys()
    sc = c["securityContext"]
    assert sc.get("allowPrivilegeEscalation") is False
    assert sc.get("capabilities", {}).get("drop") == ["ALL"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/dev"].get("readOnly") is True
    assert not mounts["/var/lib/kubelet/device-plugins"].get("readOnly"), "socket dir is written"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols[mounts["/root/config"]["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    conf = yaml.safe_load(cm["data"]["conf.yaml"])
    video = [e for e in conf if re.search(e["devicematch"], "video0")]
    assert video and video[0]["nummaxdevices"] == 1, "one owner per camera"
    assert not re.search(video[0]["devicematch"], "vhost-net")


# ------------------------------------------------- livegate's own loader


def livegate_bin() -> Path | None:
    if os.environ.get("LIVEGATE_BIN"):
        binary = Path(os.environ["LIVEGATE_BIN"])
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail(f"LIVEGATE_BIN={binary} is not an executable file")
        return binary
    for p in (ROOT / "target" / "debug" / "livegate", ROOT / "target" / "release" / "livegate"):
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    binary = livegate_bin()
    if binary is None:
        pytest.skip(
            "livegate binary not built: set LIVEGATE_BIN or build target/debug/livegate "
            "to check the rendered configs with `livegate --check-config`"
        )
    cfg = tmp_path / CONFIG_KEY
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEGATE_")}
    # Paths that exist only inside the pod are pointed at scratch copies
    # (env beats the file); every other setting comes from the ConfigMap.
    (tmp_path / "hls").mkdir(exist_ok=True)
    (tmp_path / "state").mkdir(exist_ok=True)
    env["LIVEGATE_HLS_DIR"] = str(tmp_path / "hls")
    env["LIVEGATE_STATE_DIR"] = str(tmp_path / "state")
    # The token files come from the livegate-auth Secret in the pod; here
    # throwaway ones in the same format stand in for them.
    cfg_keys = tomllib.loads(text).keys()
    for key, secret_key in AUTH_FILES.items():
        if key in cfg_keys:
            tokens = tmp_path / secret_key
            tokens.write_text(f"# throwaway test token\n\ntest-only-{secret_key}-not-a-secret\n")
            env[f"LIVEGATE_{key.upper()}"] = str(tokens)
    if shutil.which("openssl"):
        crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
        if not crt.exists():
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-days", "1", "-subj", "/CN=livegate-test",
                 "-keyout", str(key), "-out", str(crt)],
                check=True, capture_output=True,
            )
        env["LIVEGATE_TLS_CERT"] = str(crt)
        env["LIVEGATE_TLS_KEY"] = str(key)
    # A relay stream's token_file and source_ca are Secret files in the pod
    # too. No environment variable reaches a [[stream]] table, so the file
    # given to livegate names stand-ins instead (a throwaway token; the
    # scratch certificate as the CA).
    stand_ins = {"token_file": tmp_path / "origin-token", "source_ca": tmp_path / "tls.crt"}
    stand_ins["token_file"].write_text("test-only-origin-token-not-a-secret\n")
    for s in tomllib.loads(text).get("stream", []):
        for key, stand_in in stand_ins.items():
            if isinstance(s, dict) and key in s and stand_in.exists():
                text = text.replace(f'"{s[key]}"', f'"{stand_in}"')
    cfg.write_text(text)
    return subprocess.run(
        [str(binary), "--config", str(cfg), "--check-config"],
        capture_output=True, text=True, timeout=60, env=env,
    )


def config_text(docs) -> str:
    cm, _, ref = config_mount(docs)
    return cm["data"][ref["key"]]


@pytest.mark.parametrize("docs", view_params(DEPLOYABLE))
def test_config_loads_with_livegate(docs, tmp_path):
    text = config_text(docs)
    proc = check_config(tmp_path, text)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"livegate --check-config rejected the config:\n{out}"
    assert not re.search(r"access control\s*=\s*off", out), f"access control is off:\n{out}"
    for s in tomllib.loads(text)["stream"]:
        assert s["source"] in out, f"effective settings do not show source {s['source']}:\n{out}"


def test_check_config_rejects_a_bad_setting(tmp_path):
    cm, _, ref = config_mount(render(DEPLOYABLE["test"]))
    bad = re.sub(r"(?m)^fps = .*$", 'fps = "fast"', cm["data"][ref["key"]])
    assert bad != cm["data"][ref["key"]]
    proc = check_config(tmp_path, bad)
    assert proc.returncode != 0, "a bad setting must fail --check-config"
    assert "fps" in proc.stdout + proc.stderr, "the message names the bad setting"


# ------------------------------------------------- monitoring example
#
# The dashboard's queries may only name series that /metrics exposes. The
# names come from src/http/metrics.rs itself, derived the way
# prometheus-client writes them (name, then _<unit>, then _total for
# counters), so a renamed or misspelt series fails here.

# Labels Prometheus (and the Prometheus Operator's PodMonitor) add to every
# scraped series.
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance", "service"}
PROMQL_FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "changes", "resets", "abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max",
    "histogram_quantile", "label_replace", "label_join", "vector", "scalar", "time",
    "timestamp", "absent", "absent_over_time", "avg_over_time", "min_over_time",
    "max_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "quantile_over_time", "sort", "sort_desc", "predict_linear", "sqrt", "ln", "exp",
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on",
                   "ignoring", "group_left", "group_right", "inf", "nan"}
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


@functools.cache
def metrics_source() -> str:
    # Comments out; strings stay (the names are string literals).
    return re.sub(r"(?m)//.*$", "", METRICS_RS.read_text())


def statement_around(src: str, start: int, end: int) -> str:
    return src[src.rfind(";", 0, start) + 1 : (src.find(";", end) + 1) or len(src)]


@functools.cache
def exposed_series() -> frozenset[str]:
    """Every series name /metrics can expose, from src/http/metrics.rs."""
    src = metrics_source()
    assert "with_prefix" not in src, "a registry prefix: teach exposed_series() about it"
    families: dict[str, tuple[str, str | None]] = {}
    string = r'"(?:[^"\\]|\\.)*"'
    # Collector descriptors: ("name", "help", None | Some(&Unit::X)).
    for m in re.finditer(
        rf'\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*,\s*{string}\s*,\s*(None|Some\(\s*&?\s*Unit::(\w+)\s*\))\s*,?\s*\)',
        src,
    ):
        stmt = statement_around(src, m.start(), m.end())
        kind = "gauge" if re.search(r"\bgauge\s*\(|MetricType::Gauge|\bConstGauge\b", stmt) else "counter"
        if re.search(r"MetricType::Histogram|\bHistogram\b", stmt):
            kind = "histogram"
        families[m.group(1)] = (kind, m.group(3))
    # Registered metrics: registry.register[_with_unit]("name", "help", [Unit::X,] metric).
    for m in re.finditer(
        rf'\.register(?:_with_unit)?\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"\s*,\s*{string}\s*,\s*(?:Unit::(\w+)\s*,\s*)?(\w+)',
        src,
    ):
        decl = re.search(rf"\b{m.group(3)}\b[^;]*?\b(Counter|Gauge|Histogram)\b", src)
        assert decl, f"cannot tell the type of {m.group(1)}"
        families[m.group(1)] = (decl.group(1).lower(), m.group(2))
    names = set()
    for name, (kind, unit) in families.items():
        if unit:
            name = f"{name}_{unit.lower()}"
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return frozenset(names)


@functools.cache
def exposed_labels() -> frozenset[str]:
    """Label names in src/http/metrics.rs (a superset: label values may match too)."""
    src = metrics_source()
    string = r'"(?:[^"\\]|\\.)*"'
    # ("label", value) pairs; not ("name", "help", unit) descriptors.
    labels = set(re.findall(rf'\(\s*"([a-z_][a-z0-9_]*)"\s*,(?!\s*{string}\s*,)', src))
    for body in re.findall(r"EncodeLabelSet\b[^\]]*\]\s*(?:pub(?:\([^)]*\))?\s+)?struct\s+\w+\s*\{([^}]*)\}", src):
        labels |= set(re.findall(r"(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:", body))
    return frozenset(labels)


def readme_states() -> set[str]:
    """The stream states README documents for /api/streams (the same as the metric's)."""
    m = re.search(r"`state` \(`([a-z|\\-]+)`\)", (ROOT / "README.md").read_text())
    assert m, "README documents the stream states"
    return set(m.group(1).replace("\\", "").split("|"))


def promql_parts(expr: str) -> tuple[set[str], set[str], list[tuple[str, str]]]:
    """(metric names, label names, (label, value) equality matchers) of a PromQL expression."""
    e = re.sub(r"\$\{?__\w+\}?", "5m", expr)
    matchers = re.findall(r'([a-zA-Z_]\w*)\s*(?:=|!=)\s*"([^"$]*)"', e)
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)
    labels = set()
    for body in re.findall(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", body))
    e = re.sub(r"\{[^}]*\}", " ", e)
    for _, body in re.findall(GROUPING, e):
        labels |= {x.strip() for x in body.split(",") if x.strip()}
    e = re.sub(GROUPING, " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call:
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word} in {expr}"
        elif word.lower() not in PROMQL_KEYWORDS:
            names.add(word)
    return names, labels, [(k, v) for k, v in matchers if v]


def check_queries(queries: list[str]) -> list[str]:
    """What is wrong with these queries: unknown series, labels or states."""
    known, labels, states = exposed_series(), exposed_labels() | TARGET_LABELS, readme_states()
    problems = []
    for q in queries:
        names, used, matchers = promql_parts(q)
        problems += [f"unknown series {n} in {q}" for n in sorted(names - known)]
        problems += [f"unknown label {label} in {q}" for label in sorted(used - labels)]
        problems += [f"unknown state {v} in {q}" for k, v in matchers if k == "state" and v not in states]
    return problems


@functools.cache
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries(dash: dict) -> list[str]:
    """Every PromQL expression: panel targets and the variables' label_values() selectors."""
    exprs = [t["expr"] for p in all_panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
            assert m, f"variable {var['name']}: expected label_values(selector, label), got {q}"
            exprs.append(f"group by ({m.group(2)}) ({m.group(1)})")
    return exprs


def test_metrics_parser_finds_the_series():
    known = exposed_series()
    assert len(known) >= 15, f"parsed too few series from {METRICS_RS.name}: {sorted(known)}"
    for name in ("livegate_stream_state", "livegate_rtp_packets_sent_total",
                 "process_cpu_seconds_total", "process_resident_memory_bytes",
                 "livegate_http_requests_total"):
        assert name in known, f"{name} not found in {METRICS_RS.name}: {sorted(known)}"
    assert {"stream", "state", "endpoint", "status"} <= exposed_labels()


def test_query_check_catches_unknown_series_and_labels():
    """The check can fail: names and labels that /metrics does not have."""
    assert check_queries(['sum(rate(livegate_rtp_sent_bytes_total{stream="x"}[5m])) * 8']) == []
    bad = check_queries([
        "sum(rate(livegate_rtp_bytes_sent_total[$__rate_interval]))",
        "livegate_viewers",
        "sum by (camera) (livegate_webrtc_viewers)",
        'livegate_stream_state{state="offline"}',
    ])
    assert len(bad) == 4, bad


def render_monitoring() -> tuple[dict, ...]:
    return render(MONITORING)


def test_monitoring_example_renders():
    docs = render_monitoring()
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "PodMonitor"]
    for d in docs:
        assert d["metadata"]["namespace"] == NAMESPACE
        assert d["metadata"]["labels"]["app.kubernetes.io/name"] == "livegate"
    cm = only(docs, "ConfigMap")
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(cm, version, strict=True)
    assert cm["metadata"]["labels"].get("grafana_dashboard") == "1", "Grafana's sidecar label"
    assert json.loads(cm["data"][DASHBOARD.name]) == dashboard()
    # CRD objects stay out of the overlays, which must apply without them.
    for name, path in DEPLOYABLE.items():
        assert not any(d["kind"] == "PodMonitor" for d in render(path)), name


# The PodMonitor fields this example may use (monitoring.coreos.com/v1):
# kubernetes-validate has no CRD schemas, so a typo'd field, which the API
# server would drop, is caught here.
PODMONITOR_SPEC = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel",
                   "podTargetLabels", "sampleLimit", "attachMetadata"}
PODMONITOR_ENDPOINT = {"port", "portNumber", "path", "scheme", "interval", "scrapeTimeout",
                       "authorization", "tlsConfig", "honorLabels", "relabelings",
                       "metricRelabelings", "params", "followRedirects", "enableHttp2"}
SAFE_TLS = {"ca", "serverName", "insecureSkipVerify", "minVersion", "maxVersion"}


def test_podmonitor():
    pm = only(render_monitoring(), "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pm) == {"apiVersion", "kind", "metadata", "spec"}
    spec = pm["spec"]
    assert set(spec) <= PODMONITOR_SPEC, set(spec) - PODMONITOR_SPEC
    match = spec["selector"]["matchLabels"]
    assert set(spec["selector"]) == {"matchLabels"}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= PODMONITOR_ENDPOINT, set(endpoint) - PODMONITOR_ENDPOINT
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "https", "livegate serves HTTPS only"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    # Every deployable overlay's pods are selected (the relays too: their
    # autoscaler reads their viewers), and the named port is HTTPS.
    for param in view_params(DEPLOYABLE):
        (docs,), name = param.values, param.id
        assert match.items() <= pod_labels(workload(docs)).items(), f"{name}: the PodMonitor selects no pod"
        port = container_port(docs, endpoint["port"])
        assert port == listen_port(livegate_config(docs)), f"{name}: port {endpoint['port']} is not HTTPS"
    # /metrics wants an admin token: the one the pod reads from livegate-auth.
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    assert set(auth["credentials"]) == {"name", "key"}
    assert auth["credentials"] == {"name": AUTH_SECRET, "key": AUTH_FILES["admin_token_file"]}
    tls = endpoint["tlsConfig"]
    assert set(tls) <= SAFE_TLS, set(tls) - SAFE_TLS
    assert tls.get("insecureSkipVerify") is True or "ca" in tls, "skip verification or name a CA"
    for (docs,) in (param.values for param in view_params(DEPLOYABLE)):
        cfg = livegate_config(docs)
        mount, vol = mount_for(docs, cfg["admin_token_file"])
        assert vol["secret"]["secretName"] == AUTH_SECRET
        assert PurePosixPath(cfg["admin_token_file"]).name == auth["credentials"]["key"]


def test_dashboard_structure():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(all_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"panel {p['title']} overlaps another"
        cells |= area
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"{p['title']} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{p['title']}: refIds are unique"
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?(\w+)\}?", t["expr"])) - {"__rate_interval", "__range", "__interval"}
            assert used <= variables.keys(), f"{p['title']}: undefined variables {used - variables.keys()}"
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
            assert legend <= exposed_labels() | TARGET_LABELS, f"{p['title']}: legend labels {legend}"


def test_dashboard_uses_only_exposed_series():
    problems = check_queries(dashboard_queries(dashboard()))
    assert not problems, "\n".join(problems)


def test_dashboard_shows_what_an_operator_needs():
    exprs = [t["expr"] for p in all_panels(dashboard()) for t in p.get("targets", [])]
    text = "\n".join(exprs)
    for series in ("livegate_webrtc_viewers", "livegate_rtp_packets_dropped_total",
                   "livegate_keyframe_requests_total", "livegate_keyframes_forced_total",
                   "livegate_stream_state", "livegate_source_reconnects_total",
                   "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert series in text, f"the dashboard does not show {series}"
    # Bitrate: bytes per second times 8.
    assert any(re.search(r"rate\(livegate_rtp_sent_bytes_total\{[^}]*\}\[[^\]]+\]\)\)?\s*\*\s*8\b", e) for e in exprs)
    # Counters only make sense through rate/increase.
    for e in exprs:
        for name in promql_parts(e)[0]:
            if name.endswith("_total"):
                assert re.search(rf"\b(rate|irate|increase)\(\s*{name}\b", e), f"{name} without rate() in {e}"


def test_dashboard_queries_parse_with_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian: prometheus)")
    rules = []
    for i, q in enumerate(dashboard_queries(dashboard())):
        q = re.sub(r"\$\{?__(rate_interval|interval)\}?", "1m", q)
        q = re.sub(r"\$\{?__range\}?", "1h", q)
        q = re.sub(r"\$\{?\w+\}?", ".*", q)
        rules.append({"record": f"livegate:dashboard_check:{i}", "expr": q})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------ image and build script


def dockerfile_runtime_stage() -> str:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)
    return stages[-1]


def test_dockerfile():
    text = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile_runtime_stage()
    assert re.search(r"(?m)^FROM rust:1-\$\{DEBIAN_RELEASE\} AS build", text)
    assert runtime.startswith("debian:${DEBIAN_RELEASE}-slim"), "slim runtime"
    assert re.search(r"(?m)^ARG DEBIAN_RELEASE=bookworm$", text)
    assert "cargo build --release --locked" in text
    assert not re.search(r"(?mi)^HEALTHCHECK", text), "Kubernetes probes do health checks"
    assert re.search(rf"(?m)^USER {UID}:{UID}$", runtime), "numeric non-root user"
    assert re.search(r"(?m)^ENTRYPOINT \[\"/usr/local/bin/livegate\"\]$", runtime)
    base = tomllib.loads((K8S / "base" / CONFIG_KEY).read_text())
    udp, tcp = media_ports(base)
    expose = re.findall(r"(?m)^EXPOSE (.+)$", runtime)
    assert len(expose) == 1, "one EXPOSE line"
    want = {f"{listen_port(base)}/tcp", f"{udp}/udp", f"{tcp}/tcp"}
    assert set(expose[0].split()) == want, f"EXPOSE {expose[0]}: want {' '.join(sorted(want))} (k8s/base)"
    for pkg in ("ca-certificates", "libgstreamer1.0-0", "gstreamer1.0-plugins-base",
                "gstreamer1.0-plugins-good", "gstreamer1.0-plugins-bad",
                "gstreamer1.0-plugins-ugly", "gstreamer1.0-libav"):
        assert re.search(rf"\b{re.escape(pkg)}\b", runtime), pkg
    assert "--groups video" in runtime
    assert "-dev" not in runtime.split("LABEL", 1)[1], "no -dev packages at runtime"


def test_dockerignore_keeps_secrets_and_target_out():
    lines = set((ROOT / ".dockerignore").read_text().split())
    assert {"target", ".git", "**/*.key", "**/*.pem"} <= lines
    for needed in ("src", "web", "Cargo.toml", "Cargo.lock"):
        assert needed not in lines


def test_build_sh_syntax_and_lint():
    script = ROOT / "build.sh"
    assert os.access(script, os.X_OK), "build.sh must be executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(script), str(ROOT / "tests/k8s/run.sh")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_build_sh_dry_run():
    env = {**os.environ, "PROFILE": "registry.example.com", "TAG": "v9.9.9"}
    env.pop("IMAGE", None), env.pop("PLATFORMS", None), env.pop("LATEST", None)
    proc = subprocess.run([str(ROOT / "build.sh"), "-d"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("docker ")]
    assert lines[0].startswith("docker buildx create --name livegate-builder")
    build = lines[-1]
    assert build.startswith("docker buildx build ")
    for part in ("--platform linux/amd64,linux/arm64", "--push",
                 "--tag registry.example.com/livegate:v9.9.9", "--file Dockerfile ."):
        assert part in build, part
    help_proc = subprocess.run([str(ROOT / "build.sh"), "-h"], capture_output=True, text=True)
    assert help_proc.returncode == 0 and "-d" in help_proc.stdout
    nothing = subprocess.run([str(ROOT / "build.sh"), "-d"], capture_output=True, text=True,
                             env={k: v for k, v in env.items() if k != "PROFILE"}, cwd=ROOT)
    assert nothing.returncode != 0, "pushing needs PROFILE"


# ------------------------------------------------------------- the guide


@pytest.mark.parametrize("doc", [ROOT / "README.md", GUIDE], ids=lambda p: p.name)
def test_guide_references_exist(doc):
    text = doc.read_text()
    refs = set(re.findall(r"\b((?:k8s|device_manager|tests/k8s)/[\w./-]*\w)", text))
    assert refs, f"{doc.name} names the files it uses"
    missing = sorted(r for r in refs if not (ROOT / r).exists())
    assert not missing, f"{doc.relative_to(ROOT)} names missing files: {missing}"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", doc.read_text())
    return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", text)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_links_resolve(doc):
    text = re.sub(r"(?ms)^```.*?^```", "", doc.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: broken links {broken}"


def test_readme_points_at_the_guides():
    readme = (ROOT / "README.md").read_text()
    assert "(docs/KUBERNETES.md)" in readme and "(docs/TESTING.md)" in readme


def test_guide_creates_the_auth_secret():
    """The documented commands make the Secret the manifests mount."""
    text = GUIDE.read_text()
    creates = re.findall(r"create secret generic " + AUTH_SECRET + r"[^`]*?(?=\n\S|\n\n|$)", text, re.S)
    assert creates, f"{GUIDE.name} shows how to create the Secret {AUTH_SECRET}"
    for cmd in creates:
        for secret_key in AUTH_FILES.values():
            assert re.search(rf"--from-(?:literal|file)={re.escape(secret_key)}=", cmd), (
                f"{GUIDE.name}: `{cmd.strip()}` does not set the key {secret_key}"
            )
    assert any("--dry-run=client -o yaml | kubectl apply -f -" in c for c in creates), (
        "the guide shows how to rotate the tokens in place"
    )
