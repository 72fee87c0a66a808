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
ADDRESS_FORMS = "auto, local, ray://HOST[:PORT] or HOST:PORT"
RAY_CLIENT_PORT = 10001  # ray:// without a port
CONNECT_TIMEOUT_S = 10.0  # ray.init retries an address that does not answer for minutes; one TCP connect says first


def check_address(address: str, flag: str = "--ray") -> str:
    """`address` when it has a form ray.init understands and, when remote, a port in [1, 65535]; else a ValueError
    naming `flag` and the forms."""
    if not ADDRESS.fullmatch(address):
        raise ValueError(f"{flag}: expected {ADDRESS_FORMS}, got {address!r}")
    host_port(address, flag)
    return address


def host_port(address: str, flag: str = "--ray") -> Optional[tuple]:
    """(host, port) that a remote `address` connects to first; None for auto and local."""
    if address in ("auto", "local"):
        return None
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    m = re.fullmatch(r"\[([0-9A-Fa-f:]+)\](?::([0-9]{1,5}))?|([^:\[\]]+)(?::([0-9]{1,5}))?", rest)
    if m is None:
        raise ValueError(f"{flag}: expected {ADDRESS_FORMS}, got {address!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    port = int(port) if port else RAY_CLIENT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"{flag}: port {port} of {address!r} is not in [1, 65535]")
    return host, port


def check_reachable(address: str, flag: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A RuntimeError within `timeout` when nothing accepts a connection at a remote `address`, where ray.init would
    keep retrying for minutes before it said so."""
    import socket
    target = host_port(address, flag)
    if target is None:
        return
    host, port = target
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__)
        raise RuntimeError(f"{flag}: cannot reach the Ray cluster at {address!r}: {why}") from None


def connect(address: Optional[str] = None, num_cpus: Optional[int] = None):
    """Initialise Ray once per process: `address` ("auto", "ray://host:10001", "host:6379"), else $RAY_ADDRESS, else
    a new local instance (`num_cpus` caps it). An already initialised Ray is reused as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    flag = "--ray" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(check_address(address, flag), flag)
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
