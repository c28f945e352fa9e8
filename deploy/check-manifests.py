#!/usr/bin/env python3
"""Checks the deployment files against each other, the image and `rampart --help`.

Parses deploy/kubernetes/*.yaml and deploy/compose/*.yml (PyYAML) and
deploy/systemd/rampart.env.example, and fails, naming each problem, if:
  - a Kubernetes object does not validate, strictly (no unknown field), against the API schema
    of Kubernetes KUBERNETES_VERSION (kubernetes-validate, which ships the schemas);
  - a RAMPART_* variable they set is not one that `rampart --help` lists;
  - Kubernetes: the Services, StatefulSet and PodDisruptionBudget do not select the same pods;
    the StatefulSet's serviceName is not the headless Service; ports 2379 (client) and 2380
    (peer) differ between containers, Services, probes and the URL variables; the initial
    cluster does not name rampart-0 .. rampart-<replicas-1> at their stable names; the volume
    is not mounted at the image's /var/lib/rampart; a probe, resource requests or
    maxUnavailable: 1 is missing; the pods' user is not the image's;
  - Compose: a file's members are not those its initial cluster names, with their own
    advertised URLs, a named volume at /var/lib/rampart, a loopback client port and a
    rampartctl health check.

Usage: deploy/check-manifests.py [RAMPART_BINARY]   (default target/release/rampart, else
target/debug/rampart). Needs PyYAML and kubernetes-validate from PyPI
(`python3 -m pip install pyyaml kubernetes-validate`).
"""

import glob
import os
import re
import subprocess
import sys

import kubernetes_validate
import yaml

# The oldest Kubernetes these manifests are meant for (policy/v1 PodDisruptionBudgets are 1.21+).
KUBERNETES_VERSION = "1.30.0"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


def help_variables(binary):
    text = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
    return set(re.findall(r"\[env: (RAMPART_[A-Z0-9_]+)=", text))


def image_facts():
    """The uid, volume and data directory deploy/build-image.sh gives the image."""
    script = open(os.path.join(ROOT, "deploy/build-image.sh")).read()
    uid = int(re.search(r"^uid=(\d+)$", script, re.M).group(1))
    volume = re.search(r"^VOLUME (\S+)$", script, re.M).group(1)
    data_dir = re.search(r"RAMPART_DATA_DIR=(\S+)", script).group(1)
    return uid, volume, data_dir


def check_variables(where, names, known):
    for name in names:
        if name.startswith("RAMPART_"):
            check(name in known, f"{where}: {name} is not a variable of `rampart --help`")


def parse_cluster(text):
    """name -> peer URL of an --initial-cluster value."""
    return dict(entry.split("=", 1) for entry in text.split(",") if entry)


def check_kubernetes(known, uid, volume, data_dir):
    docs = []
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml"))):
        if os.path.basename(path) != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(open(path)) if d]
    kustomization = yaml.safe_load(open(os.path.join(ROOT, "deploy/kubernetes/kustomization.yaml")))
    listed = set(kustomization["resources"])
    for path in glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml")):
        name = os.path.basename(path)
        check(name == "kustomization.yaml" or name in listed, f"kustomization.yaml leaves out {name}")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        try:
            kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{d['kind']} {d['metadata']['name']}: {e.message} at {list(e.path)}")
    (sts,) = by_kind["StatefulSet"]
    (pdb,) = by_kind["PodDisruptionBudget"]
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    check(len(headless) == 1 and len(services) == 2, "want one headless and one client Service")
    peers = headless[0]
    check(peers["spec"].get("publishNotReadyAddresses") is True,
          "the headless Service must publish members before they are ready")
    check(sts["spec"]["serviceName"] == peers["metadata"]["name"],
          "the StatefulSet's serviceName is not the headless Service")

    spec = sts["spec"]
    labels = spec["template"]["metadata"]["labels"]
    selects = lambda selector: all(labels.get(k) == v for k, v in selector.items())
    check(selects(spec["selector"]["matchLabels"]), "the StatefulSet's selector misses its pods")
    check(selects(pdb["spec"]["selector"]["matchLabels"]), "the PDB's selector misses the pods")
    check(pdb["spec"].get("maxUnavailable") == 1, "the PDB must have maxUnavailable: 1")
    for name, service in services.items():
        check(selects(service["spec"]["selector"]), f"Service {name} selects no member")

    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(ports == {"client": 2379, "peer": 2380}, f"container ports {ports}")
    for name, service in services.items():
        for port in service["spec"]["ports"]:
            target = port.get("targetPort")
            check(ports.get(target) == port["port"], f"Service {name} port {port} is not the container's")
    check(pod["securityContext"].get("runAsUser") == uid, f"pods do not run as the image's uid {uid}")
    check(pod["securityContext"].get("fsGroup") == uid, "the volume's fsGroup is not the image's gid")

    env = {e["name"]: e.get("value") for e in container["env"]}
    check_variables("statefulset.yaml", env, known)
    check(env.get("RAMPART_DATA_DIR", data_dir).startswith(volume + "/"),
          "the data directory is not inside the volume")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [c["metadata"]["name"] for c in spec["volumeClaimTemplates"]]
    check(any(mounts.get(c) == volume for c in claims), f"no claim template mounted at {volume}")

    service_name = peers["metadata"]["name"]
    stable = lambda ordinal, port: (
        f"http://rampart-{ordinal}.{service_name}.$(POD_NAMESPACE).svc:{port}")
    cluster = parse_cluster(env["RAMPART_INITIAL_CLUSTER"])
    want = {f"{sts['metadata']['name']}-{i}": stable(i, 2380) for i in range(spec["replicas"])}
    check(cluster == want, f"RAMPART_INITIAL_CLUSTER {cluster} is not the StatefulSet's members {want}")
    own = f"http://$(POD_NAME).{service_name}.$(POD_NAMESPACE).svc"
    check(env.get("RAMPART_NAME") == "$(POD_NAME)", "RAMPART_NAME is not the pod's name")
    check(env.get("RAMPART_INITIAL_ADVERTISE_PEER_URLS") == own + ":2380", "peer URL not the stable name")
    check(env.get("RAMPART_ADVERTISE_CLIENT_URLS") == own + ":2379", "client URL not the stable name")
    check(env.get("RAMPART_LISTEN_CLIENT_URLS", "").endswith(":2379"), "client listen port")
    check(env.get("RAMPART_LISTEN_PEER_URLS", "").endswith(":2380"), "peer listen port")

    for probe in ("readinessProbe", "livenessProbe"):
        p = container.get(probe)
        check(p is not None, f"no {probe}")
        if p and "tcpSocket" in p:
            port = p["tcpSocket"]["port"]
            check(ports.get(port, port) == 2379, f"{probe} is not on the client port")
        if p and "exec" in p:
            check(p["exec"]["command"][0] == "/usr/local/bin/rampartctl", f"{probe} runs no rampartctl")
        if p and "httpGet" in p:
            port = p["httpGet"]["port"]
            check(ports.get(port, port) == 2379, f"{probe} is not on the client port")
            want = {"readinessProbe": "/readyz", "livenessProbe": "/livez"}[probe]
            check(p["httpGet"]["path"] == want, f"{probe} does not ask {want}")
    requests = container.get("resources", {}).get("requests", {})
    check("cpu" in requests and "memory" in requests, "no cpu and memory requests")
    check(container.get("imagePullPolicy") == "Never", "the image comes from no registry: Never pull")


def check_compose(known, volume):
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/compose/*.yml"))):
        name = os.path.basename(path)
        doc = yaml.safe_load(open(path))
        check(str(doc.get("version")).startswith(("2.", "3.")), f"{name}: version 2.x or 3.x")
        services = doc["services"]
        first = next(iter(services.values()))
        cluster = parse_cluster(first["environment"]["RAMPART_INITIAL_CLUSTER"])
        check(set(cluster) == set(services), f"{name}: initial cluster {set(cluster)} != services")
        host_ports = []
        for member, service in services.items():
            env = service["environment"]
            check_variables(name, env, known)
            check(env.get("RAMPART_NAME") == member, f"{name}: {member}'s RAMPART_NAME")
            check(cluster.get(member) == f"http://{member}:2380", f"{name}: {member}'s peer URL")
            check(env.get("RAMPART_INITIAL_ADVERTISE_PEER_URLS") == f"http://{member}:2380",
                  f"{name}: {member} advertises another peer URL")
            check(env.get("RAMPART_ADVERTISE_CLIENT_URLS") == f"http://{member}:2379",
                  f"{name}: {member} advertises another client URL")
            check(service["volumes"] == [f"{member}:{volume}"], f"{name}: {member}'s volume")
            check(member in doc["volumes"], f"{name}: {member}'s volume is not a named volume")
            (port,) = service["ports"]
            check(port.startswith("127.0.0.1:") and port.endswith(":2379"),
                  f"{name}: {member} publishes {port}, not a loopback client port")
            host_ports.append(port.split(":")[1])
            test = service["healthcheck"]["test"]
            check(test[:2] == ["CMD", "/usr/local/bin/rampartctl"], f"{name}: {member}'s health check")
        check(len(set(host_ports)) == len(host_ports), f"{name}: two members publish one port")


def check_systemd(known):
    path = os.path.join(ROOT, "deploy/systemd/rampart.env.example")
    names = [line.split("=", 1)[0] for line in open(path)
             if "=" in line and not line.startswith("#")]
    check_variables("rampart.env.example", names, known)
    unit = open(os.path.join(ROOT, "deploy/systemd/rampart.service")).read()
    check_variables("rampart.service", re.findall(r"Environment=(RAMPART_[A-Z_]+)=", unit), known)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    if binary is None:
        for candidate in ("target/release/rampart", "target/debug/rampart"):
            if os.path.exists(os.path.join(ROOT, candidate)):
                binary = os.path.join(ROOT, candidate)
                break
    if binary is None:
        sys.exit("check-manifests: no rampart binary; build one or name it")
    known = help_variables(binary)
    check(len(known) > 10, f"`{binary} --help` lists too few RAMPART_* variables: {known}")
    uid, volume, data_dir = image_facts()
    check_kubernetes(known, uid, volume, data_dir)
    check_compose(known, volume)
    check_systemd(known)
    if problems:
        for p in problems:
            print(f"check-manifests: {p}", file=sys.stderr)
        sys.exit(1)
    print(f"check-manifests: Kubernetes, Compose and systemd files agree ({len(known)} variables)")


if __name__ == "__main__":
    main()
