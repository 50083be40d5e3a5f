"""Scaling out: the rendered Kubernetes, KServe and Locust manifests (up to date, valid against the
Kubernetes OpenAPI schemas and the KServe and Prometheus Operator CRDs, within policy), the
autoscaler's signal (produced by the adapter rule, present per pod in a real Prometheus scraping
real TorchServe instances), the pod's front door (real nginx with its key check in front of a
TorchServe with the cluster's config), distributed Locust across replicas, and the queueing model.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml

import models
from serving import capacity, deploy
from serving.paths import ROOT

K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest Kubernetes EKS still supports here, and the newest
SCHEMAS = ROOT / "deploy" / "schemas"
CRD_GROUPS = ("serving.kserve.io", "monitoring.coreos.com")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy")
    deploy.render(out)
    return out


def documents(folder: Path) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                found.append((str(path.relative_to(folder)), doc))
    return found


def crd_schemas() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> the CRD's openAPIV3Schema."""
    found = {}
    for path in SCHEMAS.glob("*.yaml.gz"):
        crd = yaml.safe_load(gzip.decompress(path.read_bytes()))
        for version in crd["spec"]["versions"]:
            found[(crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"])] = \
                version["schema"]["openAPIV3Schema"]
    return found


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare. The API server drops them without a word (structural
    schemas prune), so a misspelt field would be lost, not refused."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key not in schema["properties"]:
                found.append(f"{path}.{key}")
            elif not (path == "" and key == "metadata"):
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


# -- generated, current, valid ------------------------------------------------------------------

def test_committed_manifests_are_what_render_makes(rendered):
    """deploy/ is generated: a model folder, capacity.json or the renderer changed without a new
    render fails here."""
    for path in sorted(rendered.rglob("*.yaml")):
        committed = ROOT / "deploy" / path.relative_to(rendered)
        assert committed.exists(), f"{committed} missing: python -m serving deploy render"
        assert committed.read_text() == path.read_text(), \
            f"{committed} is stale: python -m serving deploy render"
    for folder in ("kubernetes", "kserve", "locust"):
        for committed in (ROOT / "deploy" / folder).rglob("*.yaml"):
            assert (rendered / committed.relative_to(ROOT / "deploy")).exists(), \
                f"{committed} is not rendered any more: delete it"


def test_capacity_matches_the_shipped_serving_settings():
    """The measured figures the autoscaler is sized from belong to the archives as configured:
    a changed batch size, delay or worker count needs a new `deploy measure`."""
    measured = capacity.load_capacity()
    for name in models.names():
        assert name in measured["models"], (f"{name}: no measured capacity; run `python -m "
                                            f"serving deploy measure {name}`, then `... render`")
        entry = measured["models"][name]
        for knob, value in capacity.shipped(name).items():
            assert entry[knob] == value, f"{name}: {knob} {entry[knob]} measured, {value} shipped"
        assert entry["replica_rps"] > 0 and entry["p99_ms_at_capacity"] <= entry["p99_target_ms"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate_against_kubernetes(rendered, version):
    checked = 0
    for file, doc in documents(rendered):
        if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{file} {doc['kind']} {doc['metadata']['name']} (Kubernetes {version}): "
                        f"{e.message} at {'.'.join(map(str, e.path))}")
        checked += 1
    kinds = {doc["kind"] for _, doc in documents(rendered)}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "NetworkPolicy", "ConfigMap", "Job"} <= kinds
    assert checked >= 4 * len(models.names()) + 3


def test_custom_resources_validate_against_their_crds(rendered):
    schemas = crd_schemas()
    kinds = set()
    for file, doc in documents(rendered):
        group, _, version = doc["apiVersion"].partition("/")
        if group not in CRD_GROUPS:
            continue
        schema = schemas.get((group, version, doc["kind"]))
        assert schema, f"{file}: no CRD for {doc['apiVersion']} {doc['kind']} in {SCHEMAS}"
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
        assert not errors, f"{file} {doc['kind']}: {errors[0].message} at {list(errors[0].path)}"
        assert not unknown_fields(doc, schema), f"{file}: {unknown_fields(doc, schema)}"
        kinds.add(doc["kind"])
    assert kinds == {"InferenceService", "ServingRuntime", "PodMonitor", "PrometheusRule"}


def test_unknown_field_check_finds_a_misspelt_field():
    """The check above can fail: a misspelt predictor field is reported."""
    schema = crd_schemas()[("serving.kserve.io", "v1beta1", "InferenceService")]
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "x"}, "spec": {"predictor": {"minReplica": 2}}}
    assert unknown_fields(isvc, schema) == [".spec.predictor.minReplica"]


def test_kustomizations_list_every_rendered_file(rendered):
    for kustomization in rendered.rglob("kustomization.yaml"):
        listed = set(yaml.safe_load(kustomization.read_text().split("---\n", 1)[-1])["resources"])
        present = {p.name for p in kustomization.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, kustomization
    kubectl = shutil.which("kubectl")
    if kubectl:  # kubectl's own Kustomize, where this machine has kubectl
        built = subprocess.run([kubectl, "kustomize", str(rendered / "kubernetes")],
                               capture_output=True, text=True, check=True).stdout
        objects = [d for d in yaml.safe_load_all(built) if d]
        assert {o["metadata"].get("namespace") for o in objects} == {deploy.NAMESPACE}
        assert len(objects) == len(documents(rendered / "kubernetes")) - 1  # not the adapter's


# -- policy ---------------------------------------------------------------------------------------

def pod_specs(rendered: Path):
    """(where, pod spec) for every workload; a KServe predictor's model container merged over its
    runtime's container, as KServe merges them."""
    runtimes = {doc["metadata"]["name"]: doc for _, doc in documents(rendered)
                if doc["kind"] == "ServingRuntime"}
    for file, doc in documents(rendered):
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{file} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "InferenceService":
            predictor = doc["spec"]["predictor"]
            runtime = runtimes[predictor["model"]["runtime"]]["spec"]
            [base] = runtime["containers"]
            model = {k: v for k, v in predictor["model"].items()
                     if k not in ("modelFormat", "runtime", "storageUri")}
            merged = {**base, **model, "env": base.get("env", []) + model.get("env", [])}
            pod = {k: v for k, v in predictor.items() if k not in ("model", "autoScaling")}
            yield f"{file} {doc['metadata']['name']}", {**pod, "containers": [merged]}


def test_every_container_is_hardened_limited_and_probed(rendered):
    checked = 0
    for where, pod in pod_specs(rendered):
        pod_context = pod.get("securityContext") or {}
        assert pod.get("automountServiceAccountToken") is False, where
        for container in pod["containers"]:
            name = f"{where}/{container['name']}"
            context = container.get("securityContext") or {}
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, name
            assert (context.get("runAsUser") or pod_context.get("runAsUser") or 0) > 0, name
            assert context.get("readOnlyRootFilesystem") is True, name
            assert context.get("allowPrivilegeEscalation") is False, name
            assert context.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not context.get("privileged"), name
            limits = container.get("resources", {}).get("limits", {})
            assert {"cpu", "memory"} <= set(limits), f"{name}: limits {limits}"
            assert "/tmp" in {m["mountPath"] for m in container.get("volumeMounts", [])}, \
                f"{name}: a read-only root and no writable /tmp"
            if container["name"] in ("torchserve", "kserve-container"):
                assert "/app/run" in {m["mountPath"] for m in container["volumeMounts"]}, name
            volumes = {v["name"] for v in pod.get("volumes", [])}
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, name
            assert container.get("livenessProbe"), f"{name}: no liveness probe"
            if container.get("ports"):  # takes connections: not sent any before it is ready
                assert container.get("readinessProbe"), f"{name}: no readiness probe"
            checked += 1
    assert checked >= 2 * len(models.names()) + len(deploy.VARIANTS) * len(models.names()) + 2


def test_serving_pods_probe_per_model_readiness_and_ping(rendered):
    for where, pod in pod_specs(rendered):
        for container in pod["containers"]:
            if container["name"] not in ("torchserve", "kserve-container"):
                continue
            model = next(e["value"] for e in container["env"] if e["name"] == "SERVING_MODELS")
            assert container["readinessProbe"]["exec"]["command"] == \
                ["python", "-m", "serving", "ready", model], where
            assert container["livenessProbe"]["httpGet"]["path"] == "/ping", where


def test_network_policy_admits_inference_and_prometheus_only(rendered):
    [policy] = [d for _, d in documents(rendered) if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and spec["egress"] == []
    ports = {r["ports"][0]["port"]: r.get("from") for r in spec["ingress"]}
    assert set(ports) == {deploy.HTTP_PORT, deploy.METRICS_PORT}
    assert ports[deploy.HTTP_PORT] is None  # inference from anywhere in the cluster
    [prometheus] = ports[deploy.METRICS_PORT]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # It selects the serving pods, and they expose nothing else.
    for _, doc in documents(rendered / "kubernetes"):
        if doc["kind"] == "Deployment":
            assert spec["podSelector"]["matchLabels"].items() <= \
                doc["spec"]["template"]["metadata"]["labels"].items()
            exposed = {p["containerPort"] for c in doc["spec"]["template"]["spec"]["containers"]
                       for p in c.get("ports", [])}
            assert exposed == set(ports)


def test_autoscaler_reads_what_the_adapter_rule_produces(rendered):
    produced = {rule["name"]["as"]: rule for rule in deploy.ADAPTER_RULES}
    [adapter] = [d for _, d in documents(rendered) if d["metadata"]["name"] == "adapter-config"]
    assert yaml.safe_load(adapter["data"]["config.yaml"])["rules"] == deploy.ADAPTER_RULES
    measured = capacity.load_capacity()["models"]
    for _, doc in documents(rendered):
        if doc["kind"] != "HorizontalPodAutoscaler":
            continue
        names = [m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"]]
        assert set(names) <= set(produced), names
        # A rule's series name matches the pattern it renames.
        for name in names:
            series = re.match(r"(\w+)\{", produced[name]["seriesQuery"]).group(1)
            assert re.fullmatch(produced[name]["name"]["matches"], series)
        model = doc["metadata"]["labels"]["app.kubernetes.io/instance"]
        [name] = [n for n in models.names() if deploy.dns(n) == model]
        target = doc["spec"]["metrics"][0]["pods"]["target"]["averageValue"]
        assert target == deploy.quantity(deploy.TARGET_LOAD * measured[name]["replica_rps"])


def adapter_queries() -> dict[str, str]:
    queries = {}
    for rule in deploy.ADAPTER_RULES:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        queries[rule["name"]["as"]] = (
            rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="model-serving",pod=~"replica-.*"')
            .replace("<<.GroupBy>>", "pod"))
    return queries


def test_prometheus_rule_is_the_projects_rules_and_promtool_passes(rendered, tmp_path):
    [rule] = [d for _, d in documents(rendered) if d["kind"] == "PrometheusRule"]
    ours = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    assert rule["spec"]["groups"] == ours["groups"]
    # The same groups and the adapter's filled-in queries, checked by Prometheus's own tool.
    groups = rule["spec"]["groups"] + [{"name": "adapter", "rules": [
        {"record": f"pod:{name}:adapter", "expr": expr} for name, expr in adapter_queries().items()]}]
    file = tmp_path / "rules.yml"
    file.write_text(yaml.safe_dump({"groups": groups}))
    done = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", str(file)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in groups)} rules found" in done.stdout


def test_resources_come_from_the_measured_capacity(rendered):
    measured = capacity.load_capacity()["models"]
    for _, doc in documents(rendered / "kubernetes"):
        if doc["kind"] != "Deployment":
            continue
        name = doc["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"]
        limits = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        entry = measured[name]
        assert limits["cpu"] == str(entry["workers"] * entry["threads"])
        memory = int(limits["memory"].removesuffix("Mi"))
        assert entry["rss_mb"] * 1.5 <= memory < entry["rss_mb"] * 1.5 + 256


def test_accelerator_variants_ask_for_their_device(rendered):
    for variant, spec in deploy.VARIANTS.items():
        for _, doc in documents(rendered / "kserve" / variant):
            if doc["kind"] != "InferenceService":
                continue
            predictor = doc["spec"]["predictor"]
            assert predictor["nodeSelector"]["kubernetes.io/arch"] == spec["arch"]
            limits = predictor["model"]["resources"]["limits"]
            if spec["accelerator"]:
                assert limits[spec["accelerator"]] == "1"
                assert predictor["tolerations"][0]["key"] == spec["accelerator"]
            else:
                assert not predictor.get("tolerations")
            model = predictor["model"]["env"][0]["value"]
            assert predictor["model"]["storageUri"].endswith(f"/{variant}/{model}")


def test_cluster_config_differs_only_in_the_token_check():
    ours = [l for l in (ROOT / "config.properties").read_text().splitlines()
            if l.strip() and not l.startswith("#")]
    cluster = [l for l in deploy.cluster_properties().splitlines()
               if l.strip() and not l.startswith("#")]
    assert set(ours) - set(cluster) == {"disable_token_authorization=false",
                                        "token_expiration_min=5256000"}
    assert set(cluster) - set(ours) == {"disable_token_authorization=true"}


def test_storage_layout_is_what_kserve_reads(tmp_path, build_info):
    [folder] = deploy.storage(tmp_path, ["digits"])
    assert (folder / "config" / "config.properties").read_text() == deploy.cluster_properties()
    assert (folder / "config" / "metrics.yaml").exists()
    assert (folder / "model-store" / "digits.mar").stat().st_size > 0


# -- the queueing model --------------------------------------------------------------------------

@pytest.mark.parametrize("load", [0.5, 0.8])
def test_model_agrees_with_md1_theory(load):
    """One worker, no batching, Poisson arrivals, a fixed service time: M/D/1, whose mean wait is
    Pollaczek-Khinchine's rho * D / (2 (1 - rho))."""
    service = 0.01
    result = capacity.simulate(lambda b: service, 1, 1, 1, 0.0, rate=load / service,
                               requests=100000, seed=1)
    expected = load * service / (2 * (1 - load)) * 1000
    assert result["mean_wait_ms"] == pytest.approx(expected, rel=0.06)


def test_model_batches_and_balances_as_torchserve_and_nginx_do():
    s = capacity.interpolate({1: 0.004, 4: 0.010})
    # One closed-loop client: a lone request waits the batch delay, then batch 1.
    one = capacity.simulate(s, 1, 1, 4, 0.002, clients=1, overhead_s=0.001, requests=2000)
    assert one["throughput"] == pytest.approx(1 / (0.002 + 0.004 + 0.001), rel=0.01)
    # Many clients on two replicas: full batches on every worker, twice one replica's rate.
    single = capacity.simulate(s, 1, 1, 4, 0.002, clients=32, requests=20000)
    double = capacity.simulate(s, 2, 1, 4, 0.002, clients=64, requests=20000)
    assert single["throughput"] == pytest.approx(4 / 0.010, rel=0.02)
    assert double["throughput"] == pytest.approx(2 * single["throughput"], rel=0.02)
    assert s(2) == pytest.approx(0.006)


def test_plan_needs_more_replicas_for_more_traffic():
    s = capacity.interpolate({1: 0.004, 4: 0.010})
    few = capacity.replicas_for(300, s, 1, 4, 0.001, 0.001, p99_ms=100)
    many = capacity.replicas_for(1200, s, 1, 4, 0.001, 0.001, p99_ms=100)
    assert few["replicas"] >= 1 and many["replicas"] >= 3 * few["replicas"] - 1
    assert many["p99_ms"] <= 100 and many["utilisation"] < 1


# -- the pod, for real, on loopback ---------------------------------------------------------------

def nginx_available() -> bool:
    return bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())


@pytest.fixture(scope="module")
def pods(build_info, tmp_path_factory):
    """Two digits replicas with the cluster's config (token check off, inference on loopback),
    each pinned to a core, behind the pod's nginx front door with a key."""
    if not nginx_available():
        pytest.fail("nginx is missing: `make setup` installs it (apt-get install nginx-light)")
    from serving.torchserve import free_port
    from serving.tune import settings_of

    work = tmp_path_factory.mktemp("pods")
    settings = settings_of({**capacity.shipped("digits"), "workers": 1, "threads": 1})
    instances = capacity.cluster_instances("digits", 2, work, settings)
    key = "k" * 8 + "0123456789abcdef"
    door = capacity.FrontDoor(work / "nginx", [f"127.0.0.1:{i.ports['inference']}"
                                               for i in instances], key, free_port())
    try:
        door.start()
        yield instances, door
    finally:
        door.stop()
        for instance in instances:
            instance.stop()


def test_front_door_checks_the_key_and_torchserve_answers(pods):
    instances, door = pods
    url = f"http://127.0.0.1:{door.port}/predictions/digits"
    body = (models.MODELS_DIR / "digits" / "example.json").read_bytes()
    json_type = {"Content-Type": "application/json"}
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"},
                    {"Authorization": door.key}):
        refused = requests.post(url, data=body, headers={**json_type, **headers}, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    auth = {"Authorization": f"Bearer {door.key}", **json_type}
    answer = requests.post(url, data=body, headers=auth, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"] in [str(d) for d in range(10)]
    bad = requests.post(url, data=b'{"pixels": [[1, 2', headers=auth, timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()
    assert requests.get(f"http://127.0.0.1:{door.port}/ping", timeout=5).status_code == 200
    # The instances were started from the cluster's config: no keys of their own.
    assert all(not i.keys() for i in instances)
    # The readiness probe's command, with the pod's environment, sees the model ready.
    env = {"SERVING_CONFIG": str(instances[0].base_config), "SERVING_MODELS": "digits",
           "SERVING_RUN_DIR": str(instances[0].run_dir.parent),
           "SERVING_MANAGEMENT_PORT": str(instances[0].ports["management"])}
    ready = subprocess.run([sys.executable, "-m", "serving", "ready"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert ready.returncode == 0 and "digits" in ready.stdout and "READY" in ready.stdout, \
        ready.stdout + ready.stderr


def test_distributed_locust_through_the_front_door_reaches_every_replica(pods, tmp_path):
    """A Locust master with two worker processes, the key the front door checks: every replica
    serves, nothing fails; the adapter's per-pod series exist in a real Prometheus."""
    from serving.prometheus import Prometheus
    from serving.torchserve import free_port

    instances, door = pods
    prom = Prometheus(run_dir=tmp_path / "prometheus", port=free_port(), scrape_interval="1s",
                      torchserve_pods=tuple((f"replica-{i}", f"127.0.0.1:{s.ports['metrics']}")
                                            for i, s in enumerate(instances)))
    prom.start()
    try:
        prom.wait_ready()
        key_file = tmp_path / "key_file.json"
        key_file.write_text(json.dumps({"inference": {"key": door.key}}))
        point = capacity.locust_point("digits", f"http://127.0.0.1:{door.port}", 8, "8s",
                                      tmp_path / "locust", key_file, processes=2)
        assert point["failures"] == 0 and point["throughput"] > 20, point
        served = []
        for instance in instances:
            text = requests.get(f"{instance.metrics_url}/metrics", timeout=5).text
            served.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                              if line.startswith("ts_inference_requests_total{")))
        assert all(count > 0 for count in served), served
        assert sum(served) >= 0.9 * point["throughput"] * 8 * 0.5
        deadline = time.monotonic() + 30
        values = {}
        while time.monotonic() < deadline and len(values) < 2:
            time.sleep(2)
            values = {r["metric"]["pod"]: float(r["value"][1]) for r in
                      prom.query(adapter_queries()["model_serving_requests_per_second"])}
        assert set(values) == {"replica-0", "replica-1"} and all(v > 0 for v in values.values())
        waits = prom.query(adapter_queries()["model_serving_queue_seconds"])
        assert {r["metric"]["pod"] for r in waits} == {"replica-0", "replica-1"}
        assert all(0 <= float(r["value"][1]) < 1 and not math.isnan(float(r["value"][1]))
                   for r in waits)
    finally:
        prom.stop()
