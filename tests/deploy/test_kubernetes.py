"""deploy/kubernetes: the manifests parse as Kubernetes objects; the training Job's rendezvous is
consistent (one pod per node, a headless Service naming pod 0, torchrun's c10d flags, preemption
handled); the DaskCluster and the ConfigMap agree on the scheduler address; the Prefect work-pool
template renders with its defaults to a Job the Kubernetes worker accepts. kubectl runs only
offline (kustomize; a client dry run when it can work without a cluster). No cluster is used."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.files import DEPLOY, K8S, dockerfile_instructions, k8s_documents

DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _docs() -> list[dict]:
    return [d for docs in k8s_documents().values() for d in docs]


def _by_kind(kind: str) -> list[dict]:
    return [d for d in _docs() if d["kind"] == kind and d["apiVersion"] != "kustomize.config.k8s.io/v1beta1"]


def _one(kind: str) -> dict:
    found = _by_kind(kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_manifests_are_kubernetes_objects():
    kinds = {}
    for name, docs in k8s_documents().items():
        assert docs, f"{name} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), name
            kinds[doc["kind"]] = doc["apiVersion"]
            if doc["kind"] != "Kustomization":
                assert DNS_1123.match(doc["metadata"]["name"]), doc["metadata"]["name"]
    assert kinds == {"ConfigMap": "v1", "Service": "v1", "Job": "batch/v1", "DaskCluster": "kubernetes.dask.org/v1",
                     "Kustomization": "kustomize.config.k8s.io/v1beta1"}
    kustomization = k8s_documents()["kustomization.yaml"][0]
    assert sorted(kustomization["resources"]) == sorted(n for n in k8s_documents() if n != "kustomization.yaml")
    assert not any(d["kind"] == "Secret" for d in _docs()), "secrets are created by kubectl, never committed"


def test_training_job_is_one_indexed_pod_per_node():
    job = _one("Job")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "trainer")
    env = _env(container)
    nnodes = int(env["PGL_NNODES"]["value"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nnodes > 1
    assert pod["restartPolicy"] == "Never"
    nproc = int(env["PGL_NPROC"]["value"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == nproc, "one process per GPU"
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


def test_headless_service_names_the_rank_zero_pod_for_the_rendezvous():
    job, service = _one("Job"), _one("Service")
    pod_template = job["spec"]["template"]
    container = pod_template["spec"]["containers"][0]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"].get("publishNotReadyAddresses") is True
    assert pod_template["spec"]["subdomain"] == service["metadata"]["name"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_template["metadata"]["labels"].items(), "the Service selects the Job's pods"
    args = container["args"]
    endpoint = next(a.split("=", 1)[1] for a in args if a.startswith("--rdzv-endpoint="))
    host, port = endpoint.rsplit(":", 1)
    # an indexed Job's pod i is <job name>-<i>; with a subdomain it resolves as <pod>.<service>
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    assert "--rdzv-backend=c10d" in args
    assert "--rdzv-id=$(PGL_RDZV_ID)" in args
    assert "--nnodes=$(PGL_NNODES)" in args and "--nproc-per-node=$(PGL_NPROC)" in args
    rdzv_id = _env(container)["PGL_RDZV_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert rdzv_id == "metadata.labels['batch.kubernetes.io/controller-uid']", "the same id on every pod"
    # every $(VAR) the command uses is defined on the container
    used = set(re.findall(r"\$\((\w+)\)", " ".join(args)))
    assert used <= set(_env(container)), f"undefined: {used - set(_env(container))}"
    assert args[args.index("-m") + 1] == "pgl_core.pretrain"


def test_training_job_recreates_preempted_pods():
    job = _one("Job")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    exit_rule = next(r for r in rules if "onExitCodes" in r)
    assert exit_rule["action"] == "Ignore" and exit_rule["onExitCodes"]["values"] == [75]
    assert exit_rule["onExitCodes"]["containerName"] == "trainer"
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget"
               for r in rules if "onPodConditions" in r)
    container = job["spec"]["template"]["spec"]["containers"][0]
    # torchrun reports 75 as 1: the node wrapper restores it (tested in test_slurm.py)
    workdir = next(rest for w, rest in dockerfile_instructions() if w == "WORKDIR")
    assert container["command"] == ["bash", f"{workdir}/deploy/torchrun-node.sh"]
    assert (DEPLOY / "torchrun-node.sh").is_file()
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


def test_dask_cluster_and_config_agree_on_the_scheduler():
    cluster, config = _one("DaskCluster"), _one("ConfigMap")
    name = cluster["metadata"]["name"]
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == name
    comm = next(p for p in service["ports"] if p["name"] == "tcp-comm")
    # the operator names the scheduler's Service <cluster>-scheduler
    assert config["data"]["PGL_DASK_ADDRESS"] == f"tcp://{name}-scheduler:{comm['port']}"
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    assert worker["command"] == ["dask"] and worker["args"][0] == "worker"
    assert "--nthreads" in worker["args"] and worker["args"][worker["args"].index("--nthreads") + 1] == "1"
    refs = [r for env in worker["envFrom"] for r in env.values()]
    assert {"name": config["metadata"]["name"]} in refs and {"name": "pgl-s3"} in refs
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        assert key in config["data"]
    assert not any(re.search(r"SECRET|PASSWORD", k) for k in config["data"])


def _work_pool() -> dict:
    return json.loads((K8S / "prefect-work-pool.json").read_text())


def test_prefect_work_pool_template_declares_every_placeholder():
    from prefect.utilities.templating import find_placeholders

    template = _work_pool()
    assert set(template) == {"job_configuration", "variables"}
    declared = set(template["variables"]["properties"])
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    assert used == declared, f"undeclared {used - declared}, unused {declared - used}"
    for name, prop in template["variables"]["properties"].items():
        assert prop.get("description"), f"variable {name} has no description (the UI shows it)"


def test_prefect_work_pool_template_renders_a_job_the_worker_accepts():
    from prefect.utilities.templating import apply_values

    template = _work_pool()
    defaults = {k: v["default"] for k, v in template["variables"]["properties"].items() if "default" in v}
    config = apply_values(template["job_configuration"], defaults)
    manifest = config["job_manifest"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    # what prefect-kubernetes' worker checks before it creates a Job (its _get_base_job_manifest)
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    container = pod["containers"][0]
    assert container["name"] == "prefect-job"
    assert container["image"] == "pgl-ct:cpu"
    refs = {next(iter(r.values()))["name"] for r in container["envFrom"]}
    assert refs == {_one("ConfigMap")["metadata"]["name"], "pgl-s3"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 0
    namespace = k8s_documents()["kustomization.yaml"][0]["namespace"]
    assert manifest["metadata"]["namespace"] == namespace == config["namespace"]
    # values a training deployment sets (job_variables) land where Kubernetes reads them
    gpu = apply_values(template["job_configuration"], {**defaults, "image": "pgl-ct:cuda", "gpu_count": 8})
    gpu_container = gpu["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu_container["image"] == "pgl-ct:cuda" and gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 8


def _kubectl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    kubeconfig = tmp_path / "kubeconfig"  # none: kubectl must not reach any cluster
    env = {"PATH": os.environ.get("PATH", ""), "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=60, env=env)


needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not on PATH")


@needs_kubectl
def test_kubectl_kustomize_builds_the_manifests_offline(tmp_path):
    proc = _kubectl("kustomize", str(K8S), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    built = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert sorted(d["kind"] for d in built) == ["ConfigMap", "DaskCluster", "Job", "Service"]
    assert {d["metadata"]["namespace"] for d in built} == {"pgl"}


@needs_kubectl
@pytest.mark.parametrize("manifest", ["pgl-config.yaml", "train-job.yaml"])
def test_kubectl_client_dry_run_when_it_works_offline(tmp_path, manifest):
    proc = _kubectl("create", "--dry-run=client", "--validate=false", "-o", "yaml", "--request-timeout=5s",
                    "-f", str(K8S / manifest), tmp_path=tmp_path)
    if proc.returncode != 0 and not re.search(r"error parsing|error converting YAML|Object 'Kind' is missing",
                                              proc.stderr):
        # without a cluster kubectl cannot map kinds to resources (it asks the API server's discovery)
        pytest.skip(f"kubectl needs an API server for a dry run here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load_all(proc.stdout)
