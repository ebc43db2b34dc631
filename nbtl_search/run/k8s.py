"""A Kubernetes Indexed Job for a study: one pod per GPU slot (`nvidia.com/gpu: 1`), each running
`per_pod` workers numbered from the pod's completion index, the study file from a ConfigMap
written beside it and the storage URL from a Secret (never the manifest).

`kubectl delete job` or a pod's eviction sends SIGTERM: each worker hands its running trial back
(failed, re-queued once), as on Slurm. Not tried on a cluster (none is available where this was
written); a test checks the manifest's structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

STUDY_MOUNT = "/etc/nbtl"
SECRET_KEY = "url"
GRACE_S = 60  # seconds between SIGTERM and SIGKILL: time to hand a trial back


@dataclass(frozen=True)
class IndexedJob:
    name: str  # a DNS-1123 name (`dns_name`)
    pods: int
    image: str
    study_text: str  # the study file as the ConfigMap holds it
    worker: list[str]  # the worker's argv after the study path; the index is added per worker
    per_pod: int = 1
    secret: str = "nbtl-storage"
    cpus: int | None = None  # per pod
    mem: str | None = None  # per pod, Kubernetes' format (32Gi)
    about: tuple[str, ...] = ()


def dns_name(text: str) -> str:
    """A Kubernetes object name from a study name: lower case, `-` for anything else, 63 chars."""
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return "-".join(p for p in cleaned.split("-") if p)[:63].strip("-") or "nbtl"


def manifest(job: IndexedJob) -> str:
    """The ConfigMap and the Job, as one YAML stream for `kubectl apply -f -`."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{job.name}-study"},
        "data": {"study.yaml": job.study_text},
    }
    limits: dict[str, Any] = {"nvidia.com/gpu": 1}
    if job.cpus:
        limits["cpu"] = job.cpus
    if job.mem:
        limits["memory"] = job.mem
    the_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name},
        "spec": {
            "completionMode": "Indexed",
            "completions": job.pods,
            "parallelism": job.pods,
            "backoffLimit": 3 * job.pods,  # a pod that keeps failing is a bug, not bad luck
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": GRACE_S,
                    "containers": [
                        {
                            "name": "worker",
                            "image": job.image,
                            "command": ["/bin/sh", "-c", _shell(job)],
                            "env": [
                                {
                                    "name": "NBTL_STORAGE",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": job.secret, "key": SECRET_KEY}
                                    },
                                }
                            ],
                            "resources": {"limits": limits},
                            "volumeMounts": [
                                {"name": "study", "mountPath": STUDY_MOUNT, "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [{"name": "study", "configMap": {"name": f"{job.name}-study"}}],
                }
            },
        },
    }
    header = "".join(f"# {line}\n" for line in job.about)
    return header + yaml.safe_dump_all([config_map, the_job], sort_keys=False, width=100)


def _shell(job: IndexedJob) -> str:
    """The container's command: `per_pod` workers numbered from JOB_COMPLETION_INDEX (set by the
    Job controller), SIGTERM passed on to each, the pod ends when they all have."""
    words = " ".join(["nbtl-search", "worker", f"{STUDY_MOUNT}/study.yaml", *job.worker])
    k = job.per_pod
    if k == 1:
        return f'exec {words} --index "$JOB_COMPLETION_INDEX"\n'
    return (
        "pids=''\n"
        f"for k in $(seq 0 {k - 1}); do\n"
        f'  {words} --index "$((JOB_COMPLETION_INDEX * {k} + k))" &\n'
        '  pids="$pids $!"\n'
        "done\n"
        "trap 'kill -TERM $pids 2>/dev/null' TERM INT\n"
        "code=0\n"
        "for pid in $pids; do\n"
        '  while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done\n'
        '  [ "$rc" -eq 0 ] || code=$rc\n'
        "done\n"
        'exit "$code"\n'
    )


def k8s_memory(slurm: str) -> str:
    """Slurm's memory size (`32G`; a bare number is megabytes) as Kubernetes writes it (`32Gi`)."""
    text = slurm.strip().upper()
    unit = text[-1] if text and text[-1] in "KMGT" else "M"
    number = text[:-1] if text and text[-1] in "KMGT" else text
    if not number.isdigit():
        raise ValueError(f"not a memory size: {slurm!r} (e.g. 32G, 500M)")
    return f"{number}{unit}i"
