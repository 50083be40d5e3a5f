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
from serving.build import archive
from serving.run.frontdoor import FrontDoor
from serving.scale import capacity, deploy, policy
from serving.run.paths import ROOT

K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest Kubernetes EKS still supports here, and the newest
SCHEMAS = ROOT / "deploy" / "schemas"
CRD_GROUPS = ("serving.kserve.io", "monitoring.coreos.com")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """What `render` makes now; or, with DEPLOY_UNDER_TEST=<a deploy/ folder>, those files (older
    manifests, or ones edited by hand) under the same checks."""
    import os

    if os.environ.get("DEPLOY_UNDER_TEST"):
        return Path(os.environ["DEPLOY_UNDER_TEST"])
    out = tmp_path_factory.mktemp("deploy")
    deploy.render(out)
    return out


def documents(folder: Path) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":  # not Helm values
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
    # Every request in a pod passes the front door: the thresholds are measured through it.
    assert measured.get("through") == capacity.MEASURED_THROUGH
    for name in models.names():
        assert name in measured["models"], (f"{name}: no measured capacity; run `python -m "
                                            f"serving deploy measure {name}`, then `... render`")
        entry = measured["models"][name]
        for knob, value in archive.shipped_settings(name).items():
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


def kustomized(folder: Path) -> list[dict]:
    """What `kubectl apply -k folder` sends: kubectl's own Kustomize (kubectl 1.32 is on these
    machines; `make setup` does not install it, so elsewhere the test says so)."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed: the Kustomize builds are not checked")
    built = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def test_kustomizations_list_every_rendered_file_and_build(rendered):
    """`kubectl apply -f` of a folder would send kustomization.yaml as an object and fail: every
    folder with objects is applied with -k (the docs say so: below), so its kustomization lists
    every file in it, and kubectl's Kustomize builds it into our namespace alone."""
    folders = sorted(k.parent for k in rendered.rglob("kustomization.yaml"))
    assert {f.relative_to(rendered).as_posix() for f in folders} == {
        "kubernetes", "locust", *[f"kserve/{v}" for v in deploy.VARIANTS]}
    for folder in folders:
        listed = set(yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"])
        present = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert listed == present, folder
        objects = kustomized(folder)
        assert {o["metadata"].get("namespace") for o in objects} == {deploy.NAMESPACE}, folder
        assert len(objects) == len(documents(folder)), folder


# -- policy ---------------------------------------------------------------------------------------

def kserve_pod(isvc: dict, runtime: dict) -> tuple[dict, dict]:
    """(labels, pod spec) of an InferenceService's predictor pod in Standard mode, as KServe
    builds it (kserve/kserve v0.20.0, 1fb78105, pkg/controller/v1beta1/inferenceservice/
    components/predictor.go: buildPodSpec merges the model over the runtime's kserve-container,
    then adds the runtime's transformer-container and its other containers; buildObjectMeta
    labels the pod with the runtime's labels, the InferenceService's, and KServe's own)."""
    predictor, spec = isvc["spec"]["predictor"], runtime["spec"]
    by_name = {c["name"]: c for c in spec["containers"]}
    model = {k: v for k, v in predictor["model"].items()
             if k not in ("modelFormat", "runtime", "storageUri", "protocolVersion")}
    base = by_name["kserve-container"]
    merged = {**base, **model, "env": base.get("env", []) + model.get("env", [])}
    containers = [merged] + [c for name, c in by_name.items() if name != "kserve-container"]
    pod = {k: v for k, v in predictor.items() if k not in ("model", "autoScaling", "minReplicas",
                                                          "maxReplicas")}
    labels = {**runtime["metadata"].get("labels", {}), **isvc["metadata"].get("labels", {}),
              "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
              "component": "predictor"}
    return labels, {**pod, "containers": containers}


def kserve_pods(rendered: Path):
    runtimes = {doc["metadata"]["name"]: doc for _, doc in documents(rendered)
                if doc["kind"] == "ServingRuntime"}
    for file, doc in documents(rendered):
        if doc["kind"] == "InferenceService":
            yield file, doc, *kserve_pod(doc, runtimes[doc["spec"]["predictor"]["model"]["runtime"]])


def pod_specs(rendered: Path):
    """(where, pod spec) for every workload; a KServe predictor as KServe builds its pod."""
    for file, doc in documents(rendered):
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{file} {doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"{file} {doc['metadata']['name']}", doc["spec"]
    for file, doc, _, pod in kserve_pods(rendered):
        yield f"{file} {doc['metadata']['name']}", pod


def job_deadline(rendered: Path, where: str) -> int | None:
    for file, doc in documents(rendered):
        if f"{file} {doc['metadata']['name']}" == where and doc["kind"] in ("Job", "Pod"):
            return doc["spec"].get("activeDeadlineSeconds")
    return None


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
            # A liveness probe, or a deadline after which the Job or Pod ends anyway.
            assert container.get("livenessProbe") or job_deadline(rendered, where), \
                f"{name}: no liveness probe and no deadline"
            if container.get("ports"):  # takes connections: not sent any before it is ready
                assert container.get("readinessProbe"), f"{name}: no readiness probe"
            checked += 1
    assert checked >= 2 * len(models.names()) + 2 * len(deploy.VARIANTS) * len(models.names()) + 2


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_serving_pods_probe_readiness_over_http_through_the_front_door(rendered):
    """Readiness and startup are HTTP GETs of /ready on the front door's port, which nginx passes
    to `serving serve`'s readiness endpoint on the pod's loopback (no interpreter started per
    probe); liveness is /ping through the front door."""
    served = 0
    for where, pod in pod_specs(rendered):
        names = {c["name"]: c for c in pod["containers"]}
        server = names.get("torchserve") or names.get("kserve-container")
        if not server:
            continue
        door = next(c for c in pod["containers"] if c["image"].startswith("model-serving-frontdoor"))
        assert [p["containerPort"] for p in door["ports"]] == [deploy.HTTP_PORT], where
        for probe in ("startupProbe", "readinessProbe"):
            assert server[probe]["httpGet"] == {"path": "/ready", "port": deploy.HTTP_PORT}, where
        assert server["livenessProbe"]["httpGet"]["path"] == "/ping", where
        assert env_of(server)["SERVING_READY_PORT"] == str(deploy.READY_PORT), where
        assert env_of(door)["TORCHSERVE_READY"] == f"127.0.0.1:{deploy.READY_PORT}", where
        # TorchServe's inference API only on the pod's loopback: every request passes nginx.
        assert env_of(server)["SERVING_BIND"] == "127.0.0.1", where
        assert env_of(door)["TORCHSERVE_INFERENCE"] == \
            f"127.0.0.1:{env_of(server)['SERVING_INFERENCE_PORT']}", where
        served += 1
    assert served == len(models.names()) * (1 + len(deploy.VARIANTS))


def serving_pods(rendered: Path) -> list[tuple[str, dict, dict]]:
    """(stack, pod labels, pod spec) of every serving pod: the Deployments' and KServe's."""
    pods = [("kubernetes", doc["spec"]["template"]["metadata"]["labels"],
             doc["spec"]["template"]["spec"])
            for _, doc in documents(rendered / "kubernetes") if doc["kind"] == "Deployment"]
    return pods + [("kserve", labels, pod) for _, _, labels, pod in kserve_pods(rendered)]


def test_network_policies_admit_inference_and_prometheus_only(rendered):
    policies = [(f, d) for f, d in documents(rendered) if d["kind"] == "NetworkPolicy"]
    assert {f.split("/")[0] for f, _ in policies} == {"kubernetes", "kserve"}
    for file, network_policy in policies:
        spec = network_policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        # The default PVC storage is mounted, nothing to download: no egress at all.
        assert spec["egress"] == [], file
        ports = {r["ports"][0]["port"]: r.get("from") for r in spec["ingress"]}
        stack = "kserve" if file.startswith("kserve") else "kubernetes"
        # Inference from anywhere in the cluster: the front door, and the Deployments' gRPC door.
        inference = {deploy.HTTP_PORT} | ({deploy.GRPC_PORT} if stack == "kubernetes" else set())
        assert set(ports) == inference | {deploy.METRICS_PORT}
        assert all(ports[port] is None for port in inference)
        [prometheus] = ports[deploy.METRICS_PORT]
        assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
        # It selects its stack's serving pods, and they expose nothing else.
        selected = [pod for pod_stack, labels, pod in serving_pods(rendered)
                    if spec["podSelector"]["matchLabels"].items() <= labels.items()]
        assert len(selected) == len([p for p in serving_pods(rendered) if p[0] == stack])
        for pod in selected:
            exposed = {p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
            assert exposed == set(ports), file
    # A storage URI to download from opens DNS and HTTPS for the storage initializer, no more.
    assert deploy.storage_egress("s3://bucket/models") == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"ports": [{"protocol": "TCP", "port": 443}]}]


def test_autoscaler_reads_what_the_adapter_rule_produces(rendered):
    produced = {rule["name"]["as"]: rule for rule in deploy.ADAPTER_RULES}
    values = yaml.safe_load((rendered / "helm" / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"] == {"default": True, "custom": deploy.ADAPTER_RULES}
    assert f"{values['prometheus']['url']}:{values['prometheus']['port']}" == deploy.PROMETHEUS_URL
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


# -- what the real components do with these objects ----------------------------------------------
# No cluster runs here, so what KServe, Kubernetes, kube-prometheus-stack and the Prometheus Adapter
# do with the fields we use is written down below, each rule with its source. Every check here
# fails on the manifests of commit 06f9d44 (the first cluster review's): see each test's docstring.

KSERVE_RELEASES = {  # the three newest releases, each checked against the same rules below
    "v0.18.0": "3a432a84880407b15c63f458080258838eff2792",
    "v0.19.0": "b0eda63d2c105479140af8ec9149d992b7e44be5",
    "v0.20.0": "1fb781055dd1567164358233e1125142ca6ef1fe",
}
ISVC_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # v1beta1 IsvcNameFmt


def kserve_admission_errors(isvc: dict) -> list[str]:
    """What KServe's InferenceService validating webhook refuses, for the fields this project
    uses; the same code in v0.18.0, v0.19.0 and v0.20.0 (pkg/apis/serving/v1beta1/
    inference_service_validation.go: validateInferenceServiceName,
    validateInferenceServiceAutoscaler, validateBlockedEnvVars, validateExactlyOneImplementation,
    validateAutoScalingCompExtension -> validateScalingKedaCompExtension -> validateScaleTarget)."""
    errors = []
    meta, predictor = isvc["metadata"], isvc["spec"]["predictor"]
    if not ISVC_NAME.fullmatch(meta["name"]):
        errors.append("name format")
    annotations = meta.get("annotations", {})
    autoscaler = annotations.get("serving.kserve.io/autoscalerClass")
    if autoscaler is not None and autoscaler not in ("hpa", "external", "keda", "none"):
        errors.append(f"[{autoscaler}] is not a supported autoscaler class type")
    implementations = int("model" in predictor) + int(bool(predictor.get("containers")))
    if implementations != 1:
        errors.append("exactly one of model or containers")
    # validateBlockedEnvVars (pkg/validation/env_policy.go, DefaultBlockedEnvVars): PYTHONPATH.
    containers = [predictor.get("model", {}), *predictor.get("containers", []),
                  *predictor.get("initContainers", [])]
    if any(e.get("name") == "PYTHONPATH" for c in containers for e in c.get("env", [])):
        errors.append("PYTHONPATH is a blocked environment variable")
    mode = annotations.get("serving.kserve.io/deploymentMode")
    if mode in ("Standard", "RawDeployment") and autoscaler == "keda":
        if "scaleMetric" in predictor:
            errors.append("ScaleMetric is not supported for KEDA")
        for metric in (predictor.get("autoScaling") or {}).get("metrics", []):
            if metric["type"] not in ("Resource", "External", "PodMetric"):
                errors.append(f"unknown KEDA metric type with value [{metric['type']}]")
                continue
            source = metric.get({"External": "external", "PodMetric": "podmetric",
                                 "Resource": "resource"}[metric["type"]])
            if source is None:
                errors.append(f"metricSpec.{metric['type']} is not set")
                continue
            target = source.get("target", {})
            if metric["type"] in ("External", "PodMetric"):
                if not source.get("metric", {}).get("query"):
                    errors.append("the query should not be empty")
                if target.get("value") is None:
                    errors.append("the target threshold value should not be empty")
            kind = target.get("type")
            for name, field in (("Utilization", "averageUtilization"),
                                ("AverageValue", "averageValue"), ("Value", "value")):
                if kind == name and target.get(field) is None:
                    errors.append(f"the {name} type should be set")
    return errors


def test_kserve_admission_takes_every_inference_service(rendered):
    """The 12 InferenceServices of 06f9d44 were each refused: their KEDA target was
    `type: AverageValue, averageValue: ...` ("the target threshold value should not be empty")."""
    checked = 0
    for file, doc in documents(rendered):
        if doc["kind"] == "InferenceService":
            assert kserve_admission_errors(doc) == [], file
            checked += 1
    assert checked == len(models.names()) * len(deploy.VARIANTS)


def test_kserve_admission_check_refuses_what_kserve_refuses():
    """The check above can fail: the form 06f9d44 shipped, and other refusals."""
    metric = {"type": "External", "external": {
        "metric": {"backend": "prometheus", "serverAddress": "http://p:9090", "query": "up"},
        "target": {"type": "AverageValue", "averageValue": "10"}}}
    isvc = {"metadata": {"name": "digits-cpu", "annotations": {
                "serving.kserve.io/deploymentMode": "Standard",
                "serving.kserve.io/autoscalerClass": "keda"}},
            "spec": {"predictor": {"model": {}, "autoScaling": {"metrics": [metric]}}}}
    assert kserve_admission_errors(isvc) == ["the target threshold value should not be empty"]
    metric["external"]["target"] = {"type": "Value", "value": "10"}
    assert kserve_admission_errors(isvc) == []
    isvc["spec"]["predictor"]["model"]["env"] = [{"name": "PYTHONPATH", "value": "/x"}]
    assert kserve_admission_errors(isvc) == ["PYTHONPATH is a blocked environment variable"]
    isvc["spec"]["predictor"]["model"]["env"] = []
    isvc["metadata"]["name"] = "Digits_CPU"
    isvc["spec"]["predictor"]["containers"] = [{"name": "kserve-container"}]
    assert kserve_admission_errors(isvc) == ["name format", "exactly one of model or containers"]


def test_kserve_runs_each_model_on_its_runtime_behind_the_front_door(rendered):
    """KServe picks the named runtime only if it lists the model's format and protocol (a
    `pytorch` model is v1 unless it names another: v1beta1/inference_service_defaults.go,
    SetTorchServeDefaults; predictor_model.go, GetSupportingRuntimes). Its Standard-mode Service
    sends port 80 to the transformer-container's first port when there is one, else to the first
    container's (reconcilers/service/service_reconciler.go, createDefaultSvc): 06f9d44 sent it
    straight to TorchServe on 0.0.0.0:8080, past any front door."""
    runtimes = {d["metadata"]["name"]: d for _, d in documents(rendered)
                if d["kind"] == "ServingRuntime"}
    for file, isvc, labels, pod in kserve_pods(rendered):
        model = isvc["spec"]["predictor"]["model"]
        runtime = runtimes[model["runtime"]]["spec"]
        formats = {(f["name"], f.get("version")) for f in runtime["supportedModelFormats"]}
        assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
        assert model.get("protocolVersion", "v1") in runtime["protocolVersions"], file
        # The ServingRuntime webhook refuses the same blocked variables in the runtime's containers
        # (pkg/webhook/admission/servingruntime/servingruntime_webhook.go, validateBlockedEnvVars).
        assert not [c["name"] for c in runtime["containers"]
                    if "PYTHONPATH" in env_of(c)], model["runtime"]
        served = next((c for c in pod["containers"] if c["name"] == "transformer-container"),
                      pod["containers"][0])
        assert served["image"].startswith("model-serving-frontdoor"), file
        assert served["ports"][0]["containerPort"] == deploy.HTTP_PORT
        assert env_of(served).get("FRONTDOOR_KEY") is None  # from the Secret, not in the file
        assert any(e["name"] == "FRONTDOOR_KEY" and e["valueFrom"]["secretKeyRef"]["name"] ==
                   deploy.KEY_SECRET for e in served["env"]), file


def test_keda_queries_the_namespace_the_objects_land_in(rendered):
    """The KEDA query names the namespace; `kubectl apply -k` puts the objects there (06f9d44's
    docs gave no KServe command, and `-f` put them in the current namespace)."""
    for variant in deploy.VARIANTS:
        for obj in kustomized(rendered / "kserve" / variant):
            if obj["kind"] == "InferenceService":
                query = obj["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"][
                    "metric"]["query"]
                assert f'namespace="{obj["metadata"]["namespace"]}"' in query
                assert f'pod=~"{obj["metadata"]["name"]}-predictor-.*"' in query


def test_every_image_is_one_the_project_builds(rendered):
    """06f9d44 named `model-serving:cuda` and `:cpu-arm64`, which nothing built. Each image here
    is a tag of the project's builds: compose (cpu, frontdoor, loadtest; arm64 through
    docker/compose.arm64.yml) or docker/Dockerfile with the ACCELERATOR it names, written in
    docs/scaling.md's build commands."""
    compose = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docker" / "compose.arm64.yml").read_text()
    docs = (ROOT / "docs" / "scaling.md").read_text()
    installer = (ROOT / "docker" / "install-torch.sh").read_text() + (ROOT / "docker" / "Dockerfile").read_text()
    images = {c["image"] for _, pod in pod_specs(rendered) for c in pod["containers"]}
    assert {v["image"] for v in deploy.VARIANTS.values()} <= images
    for image in sorted(images):
        tag = image.split(":")[1]
        if f"image: {image}" in compose:
            continue
        assert re.search(rf'"\$\{{?ACCELERATOR[^"]*" = {tag}\b', installer), \
            f"{image}: no ACCELERATOR={tag} build"
        assert f"ACCELERATOR={tag}" in docs and f"-t REGISTRY/{image}" in docs, \
            f"{image}: docs/scaling.md gives no build command for it"


def test_autoscaler_owns_the_replica_count(rendered):
    """A Deployment with `replicas` beside an HPA is set back to that count at every apply
    (kubectl apply owns the field); 06f9d44 had replicas: 2 beside each HPA."""
    scaled = {d["spec"]["scaleTargetRef"]["name"] for _, d in documents(rendered)
              if d["kind"] == "HorizontalPodAutoscaler"}
    deployments = {d["metadata"]["name"]: d for _, d in documents(rendered / "kubernetes")
                   if d["kind"] == "Deployment"}
    assert scaled == set(deployments)
    for name in scaled:
        assert "replicas" not in deployments[name]["spec"], name


def qos_class(pod: dict) -> str:
    """Kubernetes' QoS class of a pod (pkg/apis/core/helper/qos/qos.go, GetPodQOS): Guaranteed
    when every container sets CPU and memory limits and its requests equal them (requests default
    to limits), BestEffort when none sets any, else Burstable."""
    containers = pod["containers"] + pod.get("initContainers", [])
    if not any(c.get("resources", {}).get(k) for c in containers for k in ("requests", "limits")):
        return "BestEffort"
    for container in containers:
        limits = container.get("resources", {}).get("limits", {})
        requests_ = {**limits, **container.get("resources", {}).get("requests", {})}
        for resource in ("cpu", "memory"):
            if resource not in limits or requests_[resource] != limits[resource]:
                return "Burstable"
    return "Guaranteed"


def test_serving_pods_are_in_the_guaranteed_class_the_docs_claim(rendered):
    """docs/scaling.md: "requests = limits: the Guaranteed class, exclusive cores under the static
    CPU manager". 06f9d44's front door asked 100m/64Mi under limits of 500m/128Mi: Burstable."""
    assert "the Guaranteed class" in " ".join((ROOT / "docs" / "scaling.md").read_text().split())
    pods = serving_pods(rendered)
    assert len(pods) == len(models.names()) * (1 + len(deploy.VARIANTS))
    for stack, labels, pod in pods:
        assert qos_class(pod) == "Guaranteed", (stack, labels)
    assert qos_class({"containers": [{"resources": {"requests": {"cpu": "1"},
                                                    "limits": {"cpu": "2", "memory": "1Gi"}}}]}) \
        == "Burstable"


def test_monitoring_objects_carry_the_label_kube_prometheus_stack_selects(rendered):
    """kube-prometheus-stack's Prometheus selects PodMonitors and PrometheusRules by
    `release: <its release name>` unless told otherwise (prometheus-community/helm-charts,
    charts/kube-prometheus-stack/templates/prometheus/prometheus.yaml, 0027117e:
    podMonitorSelectorNilUsesHelmValues / ruleSelectorNilUsesHelmValues, true in its values).
    06f9d44's carried no such label: no series, the HPAs stuck at 2, the Locust master exited 2."""
    monitors = [(f, d) for f, d in documents(rendered)
                if d["kind"] in ("PodMonitor", "PrometheusRule")]
    assert {f.split("/")[0] for f, _ in monitors} == {"kubernetes", "kserve", "locust"}
    for file, doc in monitors:
        assert doc["metadata"]["labels"].get("release") == deploy.PROMETHEUS_RELEASE, file
    # Each serving stack's PodMonitor selects its pods and a port they name (06f9d44's KServe
    # pods had no metrics port and no monitor: KEDA's query had no data).
    for file, doc in monitors:
        if doc["kind"] != "PodMonitor" or file.startswith("locust"):
            continue
        stack = file.split("/")[0]
        selector = doc["spec"]["selector"]["matchLabels"]
        pods = [pod for pod_stack, labels, pod in serving_pods(rendered)
                if pod_stack == stack and selects(selector, labels)]
        assert pods, f"{file}: selects no {stack} pod"
        for pod in pods:
            ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
            assert {e["port"] for e in doc["spec"]["podMetricsEndpoints"]} <= ports, file
    other = tmp_render(prometheus_release="monitoring-stack")
    assert all(d["metadata"]["labels"]["release"] == "monitoring-stack"
               for _, d in documents(other) if d["kind"] in ("PodMonitor", "PrometheusRule"))


def tmp_render(**options) -> Path:
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="render-"))
    deploy.render(out, **options)
    return out


def test_nothing_lands_outside_our_namespace_or_over_another_install(rendered):
    """Every object goes into the namespace of its kustomization; none names another namespace or
    a name another install owns. 06f9d44 shipped ConfigMap `adapter-config` in `monitoring`: the
    one kube-prometheus's own adapter reads, behind `kubectl top` and every CPU autoscaler; its
    rules now go into the prometheus-adapter chart's values (`rules.custom`)."""
    owned_elsewhere = {("ConfigMap", "adapter-config"), ("ConfigMap", "prometheus-adapter")}
    for file, doc in documents(rendered):
        assert "namespace" not in doc["metadata"], file
        assert (doc["kind"], doc["metadata"]["name"]) not in owned_elsewhere, file
        assert doc["metadata"]["name"].startswith((deploy.APP, "locust-")) or \
            doc["kind"] == "InferenceService", file


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def test_no_selector_reaches_the_other_stacks_pods(rendered):
    """KServe copies an InferenceService's labels onto its pods (components/predictor.go,
    buildObjectMeta), so in a shared namespace 06f9d44's Deployment selectors (Service, PDB, HPA
    through the Deployment, NetworkPolicy, PodMonitor) also chose the KServe predictors of the
    same model, and the reverse."""
    pods = serving_pods(rendered)
    locust = [(d["metadata"]["name"], d["spec"]["template"]["metadata"]["labels"])
              for _, d in documents(rendered / "locust") if d["kind"] == "Job"]
    for file, doc in documents(rendered):
        spec = doc.get("spec") or {}
        selector = (spec.get("selector", {}).get("matchLabels") if doc["kind"] in (
            "Deployment", "PodDisruptionBudget", "PodMonitor", "Job") else
            spec.get("podSelector", {}).get("matchLabels") if doc["kind"] == "NetworkPolicy" else
            spec.get("selector") if doc["kind"] == "Service" else None)
        if not selector:
            continue
        stack = file.split("/")[0]
        for pod_stack, labels, _ in pods:
            if selects(selector, labels):
                assert pod_stack == stack, f"{file} {doc['kind']} selects a {pod_stack} pod"
        for name, labels in locust:
            if selects(selector, labels):
                assert stack == "locust", f"{file} {doc['kind']} selects {name}'s pods"


def test_pods_stop_without_refusing_requests(rendered):
    """Stopping a pod: its endpoints are removed while the preStop hooks wait; then nginx finishes
    what it took (graceful quit) and `serving serve` drains TorchServe; the grace period covers
    the wait and the drain. 06f9d44 had no preStop: requests routed during the removal were
    refused."""
    for stack, labels, pod in serving_pods(rendered):
        assert pod["terminationGracePeriodSeconds"] >= deploy.PRESTOP_S + deploy.DRAIN_GRACE_S + 5
        for container in pod["containers"]:
            command = container["lifecycle"]["preStop"]["exec"]["command"]
            assert f"sleep {deploy.PRESTOP_S}" in " ".join(command), (stack, container["name"])
            if container["image"].startswith("model-serving-frontdoor"):
                assert "nginx -s quit" in command[-1]
            else:
                argv = container["command"]
                assert argv[argv.index("--drain-grace") + 1] == str(deploy.DRAIN_GRACE_S)


def nginx_body_limit_mib() -> int:
    size = re.search(r"client_max_body_size\s+(\d+)m;", (ROOT / "docker" / "nginx" /
                                                         "nginx.conf").read_text()).group(1)
    return int(size)


def test_spooled_bodies_cannot_fill_the_front_doors_volume(rendered):
    """nginx keeps a body over client_body_buffer_size (1 MB) in /tmp while it arrives; 06f9d44
    gave /tmp 64 MiB, so about seven concurrent 10 MB uploads evicted the pod. Now nginx holds at
    most FRONTDOOR_MAX_REQUESTS requests in flight (429 past that) and /tmp holds that many of the
    largest body."""
    assert nginx_body_limit_mib() == policy.MAX_BODY_MIB
    for stack, labels, pod in serving_pods(rendered):
        volumes = {v["name"]: v for v in pod["volumes"]}
        door = next(c for c in pod["containers"] if c["image"].startswith("model-serving-frontdoor"))
        limit = int(env_of(door)["FRONTDOOR_MAX_REQUESTS"])
        [tmp] = [m["name"] for m in door["volumeMounts"] if m["mountPath"] == "/tmp"]
        size = int(volumes[tmp]["emptyDir"]["sizeLimit"].removesuffix("Mi"))
        assert size >= limit * nginx_body_limit_mib(), (stack, size, limit)
    config = subprocess.run(["sh", str(ROOT / "docker" / "nginx" / "render.sh"),
                             str(ROOT / "docker" / "nginx" / "nginx.conf")], check=True,
                            capture_output=True, text=True, env={
                                "PATH": "/usr/bin:/bin", "TORCHSERVE_INFERENCE": "127.0.0.1:1",
                                "FRONTDOOR_MAX_REQUESTS": "64"}).stdout
    assert "limit_conn per_server 64;" in config


def test_distributed_locust_ends_and_its_report_leaves_the_pod(rendered, tmp_path):
    """06f9d44's workers were a Deployment that outlived the master (restarting forever), the
    master waited for workers forever with no deadline, and the report stayed in an emptyDir of a
    finished pod. Now both are Jobs with a deadline, the master gives up on missing workers, and
    it prints the report whole into its log, which `deploy results` turns back into files."""
    from loadtest import report

    jobs = {d["metadata"]["name"]: d for _, d in documents(rendered / "locust") if d["kind"] == "Job"}
    assert set(jobs) == {"locust-master", "locust-worker"}
    assert not [d for _, d in documents(rendered / "locust") if d["kind"] == "Deployment"]
    for job in jobs.values():
        assert job["spec"]["activeDeadlineSeconds"] > 0
    [master] = jobs["locust-master"]["spec"]["template"]["spec"]["containers"]
    args = master["args"]
    assert "--echo" in args and args[args.index("--expect-workers-max-wait") + 1] == \
        str(deploy.LOCUST_WORKER_WAIT_S)
    assert jobs["locust-worker"]["spec"]["completions"] == int(args[args.index("--expect-workers") + 1])
    # The log round trip, with a real report folder's kinds of files.
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.md").write_text("# Load test report\n\n| a | b |\n")
    (out / "locust_stats.csv").write_text("Type,Name\nPOST,digits\n")
    (out / "plot.png").write_bytes(b"\x89PNG")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        print("Load test: constant, 48 users")
        report.echo(out)
        print("exit")
    files = deploy.results(tmp_path / "fetched", log=printed.getvalue())
    assert files == {"report.md": "# Load test report\n\n| a | b |\n",
                     "locust_stats.csv": "Type,Name\nPOST,digits\n"}
    assert (tmp_path / "fetched" / "master.log").read_text() == printed.getvalue()
    cut = printed.getvalue().rsplit("===== END FILE report.md", 1)[0]
    assert "report.md" not in report.files_in_log(cut)


def test_the_docs_apply_every_folder_with_kustomize():
    """`kubectl apply -f` of a rendered folder sends kustomization.yaml as an object and fails;
    the docs' commands use -k for those folders, and name a command for each folder."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    applied = re.findall(r"kubectl (?:-n \S+ )?apply (-[fk]) (deploy/\S+)", text)
    assert applied
    for flag, path in applied:
        kustomized_folder = (ROOT / path / "kustomization.yaml").exists()
        assert (flag == "-k") == kustomized_folder, f"kubectl apply {flag} {path}"
    assert {p for _, p in applied} >= {"deploy/kubernetes", "deploy/kserve/cpu", "deploy/locust"}


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
    from serving.run.torchserve import free_port
    from serving.perf.tune import settings_of

    work = tmp_path_factory.mktemp("pods")
    settings = settings_of({**archive.shipped_settings("digits"), "workers": 1, "threads": 1})
    instances = capacity.cluster_instances("digits", 2, work, settings)
    key = "k" * 8 + "0123456789abcdef"
    door = FrontDoor(work / "nginx", [f"127.0.0.1:{i.ports['inference']}"
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
    from serving.run.prometheus import Prometheus
    from serving.run.torchserve import free_port

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


# -- a KServe predictor pod, for real, on loopback ------------------------------------------------

@pytest.fixture(scope="module")
def kserve_predictor(build_info, rendered, tmp_path_factory):
    """The cpu variant's digits predictor as KServe runs it: `deploy storage`'s layout at a
    stand-in for /mnt/models, kserve-container's command and environment (the runtime's merged with
    the InferenceService's, as KServe merges them) with free ports, and the transformer-container's
    front door in front with a key."""
    import os
    import signal

    if not nginx_available():
        pytest.fail("nginx is missing: `make setup` installs it (apt-get install nginx-light)")
    from serving.run.torchserve import free_port

    [(isvc, pod)] = [(doc, pod) for file, doc, _, pod in kserve_pods(rendered)
                     if file == "kserve/cpu/digits.yaml"]
    server, door = pod["containers"][0], pod["containers"][1]
    assert (server["name"], door["name"]) == ("kserve-container", "transformer-container")
    work = tmp_path_factory.mktemp("kserve")
    [mounted] = deploy.storage(work / "mnt", ["digits"])
    ports = {key: free_port() for key in ("inference", "management", "metrics", "ready",
                                          "grpc_inference", "grpc_management", "door")}
    env = {**os.environ, "SERVING_RUN_DIR": str(work / "run"),
           "SERVING_WORKER_PORT": str(20000 + ports["door"] % 20000)}
    for item in server["env"]:
        env[item["name"]] = item["value"].replace(deploy.KSERVE_MOUNT, str(mounted))
    for key in ("inference", "management", "metrics", "ready", "grpc_inference", "grpc_management"):
        env[f"SERVING_{key.upper()}_PORT"] = str(ports[key])
    env["SERVING_METRICS_BIND"] = "127.0.0.1"  # the pod's 0.0.0.0: here, loopback only
    log = open(work / "serve.log", "wb")
    process = subprocess.Popen([sys.executable, *server["command"][1:]], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    door_env = {e["name"]: e["value"] for e in door["env"] if "value" in e}
    key = "kserve-key-0123456789abcdef"
    front = FrontDoor(
        work / "nginx", [door_env["TORCHSERVE_INFERENCE"].replace(
            str(deploy.TORCHSERVE_PORT), str(ports["inference"]))], key, ports["door"],
        extra_env={"TORCHSERVE_READY": f"127.0.0.1:{ports['ready']}",
                   "FRONTDOOR_MAX_REQUESTS": door_env["FRONTDOOR_MAX_REQUESTS"]})
    try:
        front.start()
        yield process, front, ports, work
    finally:
        front.stop()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_a_kserve_predictor_answers_through_its_front_door_and_drains(kserve_predictor):
    """Starting, /ready (through nginx, from `serving serve`) answers 503 until the model has a
    live READY worker, then 200; inference needs the key; metrics are scraped; on SIGTERM /ready
    turns 503 at once and the server drains and exits 0."""
    import signal

    process, front, ports, work = kserve_predictor
    ready_url = f"http://127.0.0.1:{front.port}/ready"
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        response = requests.get(ready_url, timeout=5)
        seen.append((response.status_code, response.json().get("state")))
        if response.status_code == 200:
            break
        time.sleep(0.5)
    assert seen and seen[-1] == (200, "serving"), (seen[-5:], (work / "serve.log").read_text()[-3000:])
    assert seen[0][0] == 503 and response.json()["models"] == {"digits": True}, seen[:3]
    url = f"http://127.0.0.1:{front.port}/predictions/digits"
    body = (models.MODELS_DIR / "digits" / "example.json").read_bytes()
    json_type = {"Content-Type": "application/json"}
    refused = requests.post(url, data=body, headers=json_type, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    answer = requests.post(url, data=body, timeout=30,
                           headers={**json_type, "Authorization": f"Bearer {front.key}"})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "0"
    # The runtime declares protocolVersions [v1]: KServe's own SDK speaks it, with the key.
    from tests.clients import kserve_sdk

    v1 = kserve_sdk({"url": f"http://127.0.0.1:{front.port}", "protocol": "v1",
                     "headers": {"Authorization": f"Bearer {front.key}"}, "ready": ["digits"],
                     "calls": [{"model": "digits", "body": {"instances": [json.loads(body)]}}]})
    assert v1["live"] and v1["ready"] == {"digits": True}, v1
    [predicted] = v1["answers"]
    assert predicted["status"] == 200 and predicted["body"]["predictions"][0][0]["label"] == "0"
    assert requests.post(f"http://127.0.0.1:{front.port}/v1/models/digits:predict", json={
        "instances": [json.loads(body)]}, timeout=10).status_code == 401
    # ... and v2 (the Open Inference Protocol): Triton's client, with the key; the server's
    # readiness is the readiness endpoint's.
    from tests.clients import triton_client

    pixels = [float(v) for row in json.loads(body)["pixels"] for v in row]
    v2 = triton_client({"url": f"127.0.0.1:{front.port}", "protocol": "http",
                        "headers": {"Authorization": f"Bearer {front.key}"}, "models": ["digits"],
                        "calls": [{"model": "digits", "inputs": [{
                            "name": "pixels", "datatype": "FP32", "shape": [1, 8, 8],
                            "data": pixels}]}]})
    assert v2["live"] and v2["ready"] and v2["models"]["digits"]["ready"], v2
    assert v2["answers"][0]["outputs"]["label"]["data"][0] == "0", v2
    metrics = requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).text
    assert "ts_inference_requests_total" in metrics
    process.send_signal(signal.SIGTERM)
    draining = requests.get(ready_url, timeout=5)
    deadline = time.monotonic() + 5
    while draining.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
        draining = requests.get(ready_url, timeout=5)
    assert draining.status_code == 503, draining.text
    model = requests.get(f"http://127.0.0.1:{front.port}/v1/models/digits", timeout=5)
    assert (model.status_code, model.json()) == (503, {"name": "digits", "ready": False})
    server_ready = requests.get(f"http://127.0.0.1:{front.port}/v2/health/ready", timeout=5)
    assert (server_ready.status_code, server_ready.json()) == (503, {"ready": False})
    assert process.wait(timeout=deploy.DRAIN_GRACE_S + 20) == 0


def test_the_readiness_endpoint_answers_kserve_v1s_model_routes():
    from serving.run.readiness import ReadinessEndpoint

    endpoint = ReadinessEndpoint(["digits", "minilm"], 0).start()
    url = f"http://127.0.0.1:{endpoint.port}"
    try:
        assert requests.get(f"{url}/v1/models", timeout=5).json() == {"models": ["digits", "minilm"]}
        starting = requests.get(f"{url}/v1/models/digits", timeout=5)
        assert (starting.status_code, starting.json()["ready"]) == (503, False)
        endpoint.update({"digits": True, "minilm": False})
        answers = {m: requests.get(f"{url}/v1/models/{m}", timeout=5) for m in ("digits", "minilm")}
        assert (answers["digits"].status_code, answers["digits"].json()) == \
            (200, {"name": "digits", "ready": True})
        assert answers["minilm"].status_code == 503
        assert requests.get(f"{url}/ready", timeout=5).status_code == 503  # not every model
        missing = requests.get(f"{url}/v1/models/nope", timeout=5)
        assert (missing.status_code, missing.json()["error"]) == (404, "model_not_found")
        endpoint.update({}, state="draining")
        assert requests.get(f"{url}/v1/models/digits", timeout=5).status_code == 503
    finally:
        endpoint.stop()


# -- checkov, with the findings accepted and why --------------------------------------------------

CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
ACCEPTED = ROOT / "deploy" / "checkov-accepted.yaml"


def checkov_findings(folder: Path) -> list[tuple[str, str]]:
    """(check id, Kind.name) of every failed checkov check over a folder of manifests."""
    if not CHECKOV.exists():
        pytest.fail(f"checkov is missing: `make test` installs it into {CHECKOV.parent.parent}")
    done = subprocess.run([str(CHECKOV), "-d", str(folder), "--framework", "kubernetes",
                           "--quiet", "--compact", "--skip-download", "-o", "json"],
                          capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr[-2000:]
    report = json.loads(done.stdout)
    report = report if isinstance(report, dict) else next(r for r in report
                                                           if r["check_type"] == "kubernetes")
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    assert report["summary"]["resource_count"] > 0
    found = []
    for failed in report["results"]["failed_checks"]:
        kind, _, rest = failed["resource"].partition(".")
        name = rest.split(".", 1)[1] if "." in rest else rest  # past the namespace
        found.append((failed["check_id"], f"{kind}.{name.split('.app.kubernetes.io')[0]}"))
    return found


def unaccepted(findings: list[tuple[str, str]], accepted: list[dict]) -> tuple[list, list]:
    import fnmatch

    def matches(entry, check, resource):
        return entry["check"] == check and any(fnmatch.fnmatch(resource, pattern)
                                               for pattern in entry["resources"])

    left = [f for f in findings if not any(matches(e, *f) for e in accepted)]
    stale = [e["check"] for e in accepted if not any(matches(e, *f) for f in findings)]
    return left, stale


def test_checkov_finds_nothing_but_what_is_accepted_with_a_reason(rendered):
    accepted = yaml.safe_load(ACCEPTED.read_text())["accepted"]
    assert all(len(entry["reason"].split()) >= 5 for entry in accepted)
    findings = checkov_findings(rendered)
    left, stale = unaccepted(findings, accepted)
    assert not left, f"checkov findings with no accepted reason in {ACCEPTED}: {left}"
    assert not stale, f"entries of {ACCEPTED} that match nothing any more: {stale}"
    # The check can fail: a privileged container is a finding nobody accepted.
    assert unaccepted([("CKV_K8S_16", "Deployment.model-serving-digits")], accepted)[0]
