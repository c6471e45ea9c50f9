"""A real Serve replica runs its ranks in its own placement group, never a nested one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
from ray import serve

pytestmark = pytest.mark.usefixtures("ray_cluster")


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    # Bundle 0 holds the replica, bundles 1..tp one rank each (GPU deployments use
    # {"GPU": 1} for those).
    placement_group_bundles=[{"CPU": 0.5}, {"CPU": 1}, {"CPU": 1}],
    placement_group_strategy="STRICT_PACK",
)
class TPServer:
    def __init__(self, checkpoint: str) -> None:
        from serve import LLM

        self.llm = LLM(model=checkpoint, tensor_parallel_size=2, num_kv_blocks=32,
                       dtype="float32", device="auto")

    def __call__(self) -> dict[str, Any]:
        from serve import SamplingParams

        group = self.llm.engine.executor.group
        [output] = self.llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=4))
        return {
            "tokens": output.outputs[0].token_ids,
            "owned": group.placement.owned,
            "bundles": group.placement.bundle_indices,
            "rank_groups": [report.placement_group_id for report in group.reports()],
            "replica_group": ray.util.get_current_placement_group().id.hex(),
        }


def test_ranks_take_bundles_1_and_2_of_the_replicas_group(tp_checkpoint: Path) -> None:
    from serve import LLM, SamplingParams

    expected = LLM(model=str(tp_checkpoint), num_kv_blocks=32, dtype="float32", device="cpu"
                   ).generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=4))
    serve.start(proxy_location="Disabled")  # no HTTP port to collide with other tests
    try:
        handle = serve.run(TPServer.bind(str(tp_checkpoint)), name="tp-replica",
                           route_prefix=None)
        result = handle.remote().result(timeout_s=120)
        live_groups = [g for g in ray.util.placement_group_table().values()
                       if g["state"] != "REMOVED"]
    finally:
        serve.shutdown()
    assert result["tokens"] == expected[0].outputs[0].token_ids
    assert result["owned"] is False and result["bundles"] == [1, 2]
    assert result["rank_groups"] == [result["replica_group"]] * 2
    assert len(live_groups) == 1  # the replica's own: no nested group
