"""The running replicas of a deployment, reached one by one (operators' tools, benchmarks,
tests). Serve's handles go through the request router, which picks the replica itself, so
"ask every replica" needs the replica actors the controller lists; a replica actor is
called with the request metadata Serve's own handle sends (``RequestMetadata`` is
Serve-private, pinned with the ray version).
"""

from __future__ import annotations

import pickle
import uuid
from typing import Any


def running_replica_actors(app: str, deployment: str) -> dict[str, Any]:
    """Replica id -> actor handle, for the replicas of ``deployment`` that are RUNNING (one
    starting, stopping, or dead since the controller listed it is left out)."""
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    listed = details["applications"][app]["deployments"][deployment]["replicas"]
    actors = {}
    for replica in listed:
        if getattr(replica["state"], "value", replica["state"]) != "RUNNING":
            continue
        try:
            actors[replica["replica_id"]] = ray.get_actor(replica["actor_name"],
                                                          namespace=SERVE_NAMESPACE)
        except ValueError:  # died since the controller listed it
            continue
    return actors


def call_replicas(app: str, deployment: str, method: str, *args: Any,
                  timeout_s: float = 30.0) -> dict[str, Any]:
    """``method(*args)`` on every running replica of ``deployment``, keyed by replica id."""
    import ray
    from ray.serve._private.common import RequestMetadata

    pending = {}
    for replica_id, actor in running_replica_actors(app, deployment).items():
        metadata = RequestMetadata(request_id=uuid.uuid4().hex,
                                   internal_request_id=uuid.uuid4().hex,
                                   call_method=method, app_name=app)
        pending[replica_id] = actor.handle_request.remote(pickle.dumps(metadata), *args)
    return {replica_id: ray.get(ref, timeout=timeout_s) for replica_id, ref in pending.items()}
