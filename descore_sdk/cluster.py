"""Joining a Ray cluster for `descore serve --address` and `descore score-dataset --ray --address`.

`ray.init(address=...)` waits minutes for a cluster that is not there (measured: still waiting after
2 minutes for a closed port) and then raises its own exception types. A wrong address is the usual
mistake, so the GCS port is probed first with a short TCP connect; anything `ray.init` raises after
that becomes a `ClusterError` that names the address and what to check.
"""

from __future__ import annotations

import socket

from .errors import ClusterError

PROBE_TIMEOUT_S = 5.0


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ClusterError unless something listens at `address` ("host:port"). Addresses that are not
    host:port ("auto", "ray://…" client addresses) are left to Ray."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        port_number = int(port)
    except ValueError:
        raise ClusterError(f"Ray address {address!r} has no port number; pass HOST:PORT of the head node's GCS (default port 6379).") from None
    try:
        with socket.create_connection((host.strip("[]"), port_number), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(
            f"No Ray cluster answers at {address} ({exc.strerror or exc}). Check the head node's address and GCS port "
            "(`ray status` on the head prints it), or leave --address out to start a local Ray instance."
        ) from None


def join(ray, address: str | None, **init_kwargs) -> None:
    """`ray.init(address=address, **init_kwargs)`, with the probe first and errors made typed.
    address None: start a new local instance (init_kwargs as given), never join another cluster."""
    if address:
        probe(address)
        init_kwargs = {**init_kwargs, "address": address}
    else:
        # "local" always starts a new instance. Without it ray.init() joins whatever cluster
        # /tmp/ray/ray_current_cluster names — and waits minutes when that cluster is gone.
        init_kwargs = {**init_kwargs, "address": "local"}
    try:
        ray.init(**init_kwargs)
    except Exception as exc:  # Ray raises RuntimeError, ConnectionError, AuthenticationError, ...
        if not address:
            raise
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ClusterError(
            f"Could not join the Ray cluster at {address}: {first[:300]}. If the cluster uses token authentication, "
            "make its token available (RAY_AUTH_TOKEN or ~/.ray/auth_token); the client's Ray version must match the cluster's."
        ) from None
