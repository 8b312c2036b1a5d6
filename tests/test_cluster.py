"""KubeRay manifests in cluster/: valid for the operator's CRDs, wired to the W&B Secret and the shared volume,
and a RayJob entrypoint that the real CLI accepts (`python -m mrt_ray train --dry-run <same overrides>`)."""
from __future__ import annotations

import functools
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"  # CI keeps shared/ beside the clone
MANIFESTS = {"RayCluster": "raycluster.yaml", "RayJob": "rayjob.yaml"}
SHARED_MOUNT = "/shared"
WANDB_SECRET = {"name": "mrt-ray-wandb", "key": "api-key"}
ENTRY = ["python", "-m", "mrt_ray", "train"]
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(path: Path) -> Any:
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def _strict(schema: Any) -> Any:
    """Reject unknown fields like `kubectl apply` (strict field validation): the CRD schemas leave
    `additionalProperties` open, so without this a misspelt key would pass."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict:
    """The `openAPIV3Schema` of version v1 of the KubeRay CRD for `kind`, made strict."""
    path = CRD_DIR / f"ray.io_{kind.lower()}s.yaml"
    if not path.is_file():
        pytest.fail(f"KubeRay CRD {path} is missing: these tests need the shared data dir "
                    f"{CRD_DIR} beside the repository clone (see its README.md)")
    crd = _load(path)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return _strict(version["schema"]["openAPIV3Schema"])
    pytest.fail(f"{path}: no version v1 in spec.versions")


@functools.cache
def manifest(kind: str) -> dict:
    return _load(CLUSTER / MANIFESTS[kind])


def cluster_spec(kind: str) -> dict:
    doc = manifest(kind)
    return doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]


def pod_specs(kind: str) -> Iterator[tuple[str, dict]]:
    """(group name, pod spec) for the head and every worker group."""
    spec = cluster_spec(kind)
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group["template"]["spec"]


def entry_overrides() -> list[str]:
    """The `key=value` overrides of the RayJob entrypoint, split as the shell splits them."""
    argv = shlex.split(manifest("RayJob")["spec"]["entrypoint"])
    assert argv[:len(ENTRY)] == ENTRY, f"rayjob.yaml entrypoint must start with {' '.join(ENTRY)}: {argv}"
    overrides = argv[len(ENTRY):]
    assert overrides and all("=" in a and not a.startswith("-") for a in overrides), overrides
    return overrides


def dry_run(overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrt_ray", "train", "--dry-run", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def gpus(pod: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"])


# --------------------------------------------------------------------------- schema and kind


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_is_valid_for_the_kuberay_crd(kind: str) -> None:
    doc = manifest(kind)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    errors = sorted(jsonschema.Draft202012Validator(crd_schema(kind)).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{MANIFESTS[kind]}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                                 for e in errors)


def test_strict_schema_rejects_a_misspelt_field() -> None:
    doc = yaml.safe_load(yaml.safe_dump(manifest("RayCluster")))
    doc["spec"]["headGroupSpec"]["rayStartParam"] = doc["spec"]["headGroupSpec"].pop("rayStartParams")
    errors = list(jsonschema.Draft202012Validator(crd_schema("RayCluster")).iter_errors(doc))
    assert any("rayStartParam" in e.message for e in errors), [e.message for e in errors]


def test_rayjob_submits_over_http_to_the_same_cluster() -> None:
    job = manifest("RayJob")["spec"]
    assert job["submissionMode"] == "HTTPMode"
    assert job["shutdownAfterJobFinishes"] is True
    assert cluster_spec("RayJob") == cluster_spec("RayCluster"), \
        "rayjob.yaml's rayClusterSpec must equal raycluster.yaml's spec"


# --------------------------------------------------------------------------- pods


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_wandb_key_comes_from_the_secret_in_every_container(kind: str) -> None:
    for group, pod in pod_specs(kind):
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert "WANDB_API_KEY" in env, f"{kind} {group}/{c['name']}: no WANDB_API_KEY"
            key = env["WANDB_API_KEY"]
            assert "value" not in key, f"{kind} {group}/{c['name']}: WANDB_API_KEY inline"
            assert key["valueFrom"]["secretKeyRef"] == WANDB_SECRET
            for name, e in env.items():  # no other credential inline either
                assert not ("value" in e and any(w in name.upper() for w in ("KEY", "TOKEN", "SECRET"))), name


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_every_pod_mounts_the_shared_volume_at_the_same_path(kind: str) -> None:
    pvc = _load(CLUSTER / "storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    for group, pod in pod_specs(kind):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        shared = [name for name, claim in claims.items() if claim == pvc["metadata"]["name"]]
        assert len(shared) == 1, f"{kind} {group}: the PVC {pvc['metadata']['name']} is not a volume"
        for c in pod["containers"]:
            paths = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] == shared[0]]
            assert paths == [SHARED_MOUNT], f"{kind} {group}/{c['name']}: mounts {paths}, want {SHARED_MOUNT}"


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_one_image_and_no_gpu_on_the_head(kind: str) -> None:
    images = {c["image"] for _, pod in pod_specs(kind) for c in pod["containers"]}
    assert len(images) == 1, images
    assert gpus(dict(pod_specs(kind))["head"]) == 0


def test_worker_groups_hold_the_gpus_the_entrypoint_asks_for() -> None:
    cfg = dict(o.split("=", 1) for o in entry_overrides())
    per_group = {g["groupName"]: g["replicas"] * gpus(g["template"]["spec"])
                 for g in cluster_spec("RayJob")["workerGroupSpecs"]}
    assert float(cfg["rollout.num_gpus"]) == int(cfg["rollout.tensor_parallel_size"])  # GPUs per engine = TP
    rollout = int(cfg["rollout.num_workers"]) * int(cfg["rollout.tensor_parallel_size"])
    progress = int(cfg["progress.num_workers"]) * int(cfg["progress.num_gpus"])
    assert per_group["rollout"] == rollout + progress  # 3 + 1
    assert per_group["learner"] == int(cfg["learner.num_ranks"]) * int(cfg["learner.num_gpus"])  # 4
    for key in ("run.dir", "model.path", "task.path"):
        assert cfg[key].startswith(SHARED_MOUNT + "/"), f"{key}={cfg[key]} is not on the shared volume"


# --------------------------------------------------------------------------- entrypoint against the real CLI


def test_rayjob_entrypoint_overrides_pass_dry_run() -> None:
    proc = dry_run(entry_overrides())
    assert proc.returncode == 0, f"dry-run rejected the RayJob entrypoint:\n{proc.stdout}\n{proc.stderr}"
    assert "/shared/runs/mrt-r1-7b" in proc.stdout  # the resolved config is printed


def test_dry_run_rejects_an_unknown_key_in_the_entrypoint() -> None:
    proc = dry_run([*entry_overrides(), "rollout.num_gpu=1"])
    assert proc.returncode != 0
    assert "rollout.num_gpu" in proc.stdout + proc.stderr


def test_rayjob_pins_roles_to_their_labelled_groups_and_checkpoints_activations() -> None:
    """ray.role_label names the Ray node label that each worker group carries (`labels`), with the values mrt-ray's
    placement selects (actors.ROLE_NODES); 8192-token sequences of a 7B model need gradient checkpointing."""
    from mrt_ray.actors import ROLE_NODES

    cfg = dict(o.split("=", 1) for o in entry_overrides())
    key = cfg["ray.role_label"]
    labels = {g["groupName"]: g["labels"].get(key) for g in cluster_spec("RayJob")["workerGroupSpecs"]}
    assert set(ROLE_NODES.values()) <= set(labels.values()), (key, labels)
    assert cfg["learner.gradient_checkpointing"] == "true" and int(cfg["rollout.max_new_tokens"]) >= 8192


def test_smoke_rayjob_runs_the_gpu_smoke_on_a_gpu_pod() -> None:
    """cluster/smoke-rayjob.yaml: valid for the RayJob CRD; its entrypoint runs scripts/gpu_smoke.sh on a GPU pod
    (one GPU for the entrypoint's gpu tests, the others for the two runs) and writes to the shared volume."""
    doc = _load(CLUSTER / "smoke-rayjob.yaml")
    errors = sorted(jsonschema.Draft202012Validator(crd_schema("RayJob")).iter_errors(doc), key=str)
    assert not errors, [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    spec = doc["spec"]
    assert "scripts/gpu_smoke.sh" in spec["entrypoint"] and (REPO / "scripts" / "gpu_smoke.sh").is_file()
    assert "MRT_SMOKE_OUT=" + SHARED_MOUNT + "/" in spec["entrypoint"]
    assert spec["entrypointNumGpus"] == 1 and spec["submissionMode"] == "HTTPMode"
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert max(g["replicas"] * gpus(g["template"]["spec"]) for g in groups) >= 2
    pods = [spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups]
    for pod in pods:
        claims = {v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                  == "mrt-ray-shared"}
        assert [m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in claims] \
            == [SHARED_MOUNT]
