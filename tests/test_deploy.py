"""Deploy recipes render to what they promise: SLURM job script, Kubernetes manifests, Dockerfile.

Nothing here talks to SLURM or Kubernetes: dask-jobqueue renders the job
script locally, and the manifests are parsed and checked field by field.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"


def _load_slurm_module():
    spec = importlib.util.spec_from_file_location("rs_deploy_slurm", DEPLOY / "slurm" / "slurm_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------
# SLURM (dask-jobqueue)
# ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_slurm_job_script_has_gpu_directives_and_worker_resources(tmp_path):
    pytest.importorskip("dask_jobqueue")
    mod = _load_slurm_module()
    cluster = mod.build_cluster(
        partition="gpu",
        account="proj42",
        walltime="02:30:00",
        cores=6,
        memory="48GB",
        job_script_prologue=["source /shared/venv/bin/activate"],
        log_directory=str(tmp_path / "logs"),
        dashboard_address=None,
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    for expected in (
        "#SBATCH --gres=gpu:1",
        "#SBATCH -p gpu",
        "#SBATCH -A proj42",
        "#SBATCH -t 02:30:00",
        "#SBATCH --cpus-per-task=6",
    ):
        assert expected in directives, f"{expected!r} missing from:\n{script}"
    (worker_line,) = [ln for ln in lines if "distributed.cli.dask_worker" in ln]
    argv = shlex.split(worker_line)
    # one worker process per job (one GPU), all cores as threads, resource GPU=1
    assert argv[argv.index("--resources") + 1] == "GPU=1"
    assert argv[argv.index("--nthreads") + 1] == "6"
    assert "--nworkers" not in argv or argv[argv.index("--nworkers") + 1] == "1"
    # the prologue runs before the worker and switches off fusion for it
    assert lines.index("source /shared/venv/bin/activate") < lines.index(worker_line)
    assert "export DASK_OPTIMIZATION__FUSE__ACTIVE=False" in lines
    assert "export MALLOC_TRIM_THRESHOLD_=67108864 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_ARENA_MAX=2" in lines
    # and the housekeeping intervals remote_samsing's own clusters use
    exported = {}
    for ln in lines:
        if ln.startswith("export DASK_DISTRIBUTED__"):
            exported.update(kv.split("=", 1) for kv in shlex.split(ln)[1:])
    assert _housekeeping_config(exported) == _housekeeping_expected()


def _housekeeping_expected() -> dict:
    from remote_samsing.cluster import HOUSEKEEPING_INTERVALS

    return {key: ours for key, (_default, ours) in HOUSEKEEPING_INTERVALS.items()}


def _housekeeping_config(env: dict) -> dict:
    """What Dask reads from these environment variables, for the housekeeping keys."""
    import dask

    got = dask.config.collect_env({k: v for k, v in env.items() if k.startswith("DASK_")})
    return {key: dask.config.get(key, None, config=got) for key in _housekeeping_expected()}


def test_slurm_options_refuse_several_gpus_per_job():
    mod = _load_slurm_module()
    with pytest.raises(ValueError, match="exactly one GPU"):
        mod.gpu_worker_options(partition="gpu", gpus_per_job=2)


@pytest.mark.timeout(60)
def test_slurm_dry_run_prints_the_script(tmp_path, capsys, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)  # the log directory is created relative to here
    mod = _load_slurm_module()
    assert mod.main(["in.tif", "out", "--partition", "a100", "--cores", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH -p a100" in out and "#SBATCH --gres=gpu:1" in out and "--resources GPU=1" in out
    assert not (tmp_path / "out").exists()  # a dry run starts nothing


def test_sbatch_wrapper_calls_the_driver_script():
    text = (DEPLOY / "slurm" / "segment.sbatch").read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert re.search(r"^#SBATCH --time=\S+", text, re.M)
    assert "slurm_cluster.py" in text and '"$INPUT" "$OUTDIR"' in text


# ---------------------------------------------------------------------------
# Kubernetes (dask-kubernetes operator)
# ---------------------------------------------------------------------------
def _manifests(name: str) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]


def _one(docs, kind):
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _arg_after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_daskcluster_manifest_has_gpu_worker_group():
    docs = _manifests("daskcluster.yaml")
    cluster = _one(docs, "DaskCluster")
    group = _one(docs, "DaskWorkerGroup")
    assert cluster["apiVersion"] == group["apiVersion"] == "kubernetes.dask.org/v1"
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]

    (gpu,) = group["spec"]["worker"]["spec"]["containers"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["args"][:3] == ["dask", "cuda", "worker"]
    assert _arg_after(gpu["args"], "--resources") == "GPU=1"

    # the default workers are CPU only: no GPU limit, no GPU resource
    (cpu,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert "--resources" not in cpu["args"]

    # the scheduler keeps task annotations through optimisation
    (sched,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in sched["env"]}
    assert env["DASK_OPTIMIZATION__FUSE__ACTIVE"] == "False"
    assert {p["containerPort"] for p in sched["ports"]} == {8786, 8787}
    # every worker group: the allocator settings of remote_samsing.cluster.WORKER_MALLOC_ENV
    from remote_samsing.cluster import WORKER_MALLOC_ENV

    for c in (cpu, gpu):
        env = {e["name"]: e["value"] for e in c["env"]}
        assert {k: env.get(k) for k in WORKER_MALLOC_ENV} == WORKER_MALLOC_ENV


def test_segment_job_connects_to_the_cluster_and_shares_the_volume():
    cluster_docs = _manifests("daskcluster.yaml")
    cluster = _one(cluster_docs, "DaskCluster")
    group = _one(cluster_docs, "DaskWorkerGroup")
    pvc = _one(cluster_docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]

    job = _one(_manifests("segment-job.yaml"), "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["remote-samsing", "segment"]
    # the operator exposes the scheduler as the service <cluster name>-scheduler
    assert _arg_after(args, "--scheduler") == f"tcp://{cluster['metadata']['name']}-scheduler:8786"

    # input, output and checkpoint live on the volume that every worker mounts at the same path
    def mounts(podspec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in podspec["volumes"]
                  if "persistentVolumeClaim" in v}
        return {m["mountPath"]: claims[m["name"]] for c in podspec["containers"]
                for m in c.get("volumeMounts", []) if m["name"] in claims}

    job_mounts = mounts(pod)
    for worker_pod in (cluster["spec"]["worker"]["spec"], group["spec"]["worker"]["spec"]):
        assert mounts(worker_pod) == job_mounts == {"/data": pvc["metadata"]["name"]}
    for path in (args[2], args[3], _arg_after(args, "--checkpoint")):
        assert path.startswith("/data/")

    # one image for every process of the cluster
    images = {c["image"] for d in (cluster["spec"]["scheduler"]["spec"], cluster["spec"]["worker"]["spec"],
                                   group["spec"]["worker"]["spec"], pod) for c in d["containers"]}
    assert len(images) == 1


def test_object_storage_manifests_share_no_volume():
    """Input and OUTDIR on the store, credentials from one Secret in every pod, no PersistentVolumeClaim;
    the checkpoint each SAM2 pod loads is the file its init container copies from the store."""
    docs = _manifests("object-storage.yaml")
    assert sorted(d["kind"] for d in docs) == ["DaskCluster", "DaskWorkerGroup", "Job"]
    cluster, group, job = _one(docs, "DaskCluster"), _one(docs, "DaskWorkerGroup"), _one(docs, "Job")
    pods = {"cpu": cluster["spec"]["worker"]["spec"], "gpu": group["spec"]["worker"]["spec"],
            "job": job["spec"]["template"]["spec"]}
    for pod in pods.values():
        assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["envFrom"] == [{"secretRef": {"name": "remote-samsing-store"}}]
    args = pods["job"]["containers"][0]["args"]
    assert args[:2] == ["remote-samsing", "segment"] and args[2].startswith("s3://") and args[3].startswith("s3://")
    assert _arg_after(args, "--scheduler") == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    for name in ("gpu", "job"):
        (init,) = pods[name]["initContainers"]
        env = {e["name"]: e["value"] for e in pods[name]["containers"][0]["env"]}
        assert env["REMOTE_SAMSING_CHECKPOINT"] in init["command"][-1]
        assert any(m["mountPath"] == "/models" for m in init["volumeMounts"])
    (gpu,) = pods["gpu"]["containers"]
    assert _arg_after(gpu["args"], "--resources") == "GPU=1"
    images = {c["image"] for pod in pods.values() for c in pod["containers"] + pod.get("initContainers", [])}
    images |= {c["image"] for c in cluster["spec"]["scheduler"]["spec"]["containers"]}
    assert len(images) == 1


# ---------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------
def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision|sam2)==([\w.+]+)", text))


def test_dockerfile_versions_match_the_makefile():
    docker = (DEPLOY / "Dockerfile").read_text()
    make = (ROOT / "Makefile").read_text()
    assert _pins(docker) == {"torch": "2.14.1", "torchvision": "0.29.1", "sam2": "1.1.0"}
    assert _pins(docker) == _pins(make)  # one install recipe, two places


def test_dockerfile_installs_sam2_without_cuda_build_and_the_gpu_extra():
    docker = (DEPLOY / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)", docker, re.M)
    assert base.startswith("nvidia/cuda:13.0")  # torch 2.14.1 wheels are CUDA 13.0 builds
    (sam2_line,) = [ln for ln in docker.splitlines() if "sam2==" in ln and ln.startswith("RUN")]
    assert "SAM2_BUILD_CUDA=0" in sam2_line and "--no-build-isolation" in sam2_line
    assert re.search(r'pip install "\.\[gpu\]"', docker)
    # order matters: torch before sam2 (no build isolation), sam2 before the package
    assert docker.index("torch==") < docker.index("sam2==") < docker.index('".[gpu]"')
    assert "DASK_OPTIMIZATION__FUSE__ACTIVE=False" in docker
    assert "MALLOC_TRIM_THRESHOLD_=67108864" in docker and "MALLOC_MMAP_THRESHOLD_=33554432" in docker
    assert "MALLOC_ARENA_MAX=2" in docker
    env_block = docker[docker.index("ENV DASK_OPTIMIZATION"):]
    env_block = env_block[: env_block.index("\n\n")]
    pairs = dict(kv.split("=", 1) for kv in shlex.split(env_block.replace("\\\n", " "))[1:])
    assert _housekeeping_config(pairs) == _housekeeping_expected()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("dask-cuda") for dep in extras["gpu"])
