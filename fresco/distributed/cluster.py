"""Connecting to Ray and sizing actors: a running cluster (`address`, or RAY_ADDRESS), else a local one; one GPU per
actor where the cluster has GPUs, else one CPU."""
from __future__ import annotations

import os
import re
from typing import Optional


def require_ray():
    """The `ray` module, or a clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray: Ray is not installed; install the extra with pip install 'fresco[ray]'") from None
    return ray


# what ray.init takes as an address: a scheme it does not know is looked up as a Python module (a two-line error)
ADDRESS = re.compile(r"auto|local|ray://[^\s/]+|(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}")


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Initialise Ray once per process: `address` ("auto", "ray://host:10001", "host:6379"), else $RAY_ADDRESS, else
    a new local instance (`num_cpus` caps it). An already initialised Ray is reused as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    flag = "--ray" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and not ADDRESS.fullmatch(address):
        raise ValueError(f"{flag}: expected auto, local, ray://HOST[:PORT] or HOST:PORT, got {address!r}")
    kwargs = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        raise RuntimeError(f"--ray: cannot reach the Ray cluster at {address!r}: {e}") from None
    return ray


def actor_resources(ray) -> dict:
    """Ray options of one render actor: a whole GPU when the cluster has any, else one CPU."""
    gpus = ray.cluster_resources().get("GPU", 0)
    return {"num_gpus": 1, "num_cpus": 1} if gpus >= 1 else {"num_cpus": 1}


def max_actors(ray) -> int:
    """How many render actors the cluster can hold at once (GPUs, else CPUs)."""
    res = ray.cluster_resources()
    return max(1, int(res.get("GPU", 0)) or int(res.get("CPU", 1)))
