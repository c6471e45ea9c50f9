"""One tensor-parallel rank: a Ray actor holding its model shard, KV cache and runner.

Ray starts it and calls ``init`` once; from then on steps arrive over the rank's socket
(``cluster/channel.py``) and run on a background thread, so the actor's own thread stays
free for health checks and reports while a step runs. The class is plain Python; the group
wraps it with ``ray.remote`` and the resource options of its placement.
"""

from __future__ import annotations

import hashlib
import logging
import resource
import threading
from dataclasses import dataclass
from datetime import timedelta

import ray
import torch

from cluster.channel import StepServer
from cluster.dist import all_reduce_min, backend_for, find_free_port, init_tp_group, node_ip
from model.factory import build_runner
from model.runner import ModelRunner
from model.runner_config import RunnerConfig
from model.step import StepInput, StepOutput

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerInit:
    """Everything a rank needs to join its group and load its shard."""

    config: RunnerConfig
    device: str  # "cuda" (the one GPU Ray assigned) or "cpu"
    master_addr: str
    master_port: int
    init_timeout_s: float
    token: bytes  # the secret the engine presents on the step channel


@dataclass(frozen=True)
class ComputeLogits:
    """Sent on the step channel instead of a step: run it, answer with rank 0's logits of
    the sampled rows and sample nothing. Tests compare them across tensor-parallel sizes."""

    step: StepInput


@dataclass(frozen=True)
class WorkerInfo:
    rank: int
    num_kv_blocks: int  # agreed by every rank
    max_model_len: int
    address: tuple[str, int]  # where the step channel listens
    num_host_blocks: int = 0  # the KV host tier's blocks, agreed by every rank (0: no tier)
    host_block_bytes: int = 0  # bytes of one host block on this rank


@dataclass(frozen=True)
class ParamDigest:
    shape: tuple[int, ...]
    dtype: str
    sha256: str  # over the raw bytes: equal digests mean bit-identical tensors


@dataclass(frozen=True)
class ShardReport:
    """What a rank holds, for tests and operators: its parameters and its memory."""

    rank: int
    tp_size: int
    params: dict[str, ParamDigest]
    param_bytes: int
    peak_rss_bytes: int  # high-water mark of resident memory (file-backed pages included)
    rss_anon_bytes: int  # resident anonymous memory now: the weights and KV live here
    placement_group_id: str | None  # the group Ray placed this rank in


def digest(tensor: torch.Tensor) -> ParamDigest:
    raw = tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()
    return ParamDigest(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."),
                       hashlib.sha256(raw).hexdigest())


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


class TPWorker:
    def __init__(self, rank: int, tp_size: int) -> None:
        self.rank = rank
        self.tp_size = tp_size
        self.runner: ModelRunner | None = None
        self.server: StepServer | None = None
        self.thread: threading.Thread | None = None

    def rendezvous_address(self) -> tuple[str, int]:
        """Called on rank 0 only: the group's TCP store will listen here."""
        return node_ip(), find_free_port()

    def init(self, spec: WorkerInit) -> WorkerInfo:
        config = spec.config
        device = torch.device("cuda", 0) if spec.device == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)  # Ray made the assigned GPU the only visible one
        ctx = init_tp_group(self.rank, self.tp_size, spec.master_addr, spec.master_port,
                            backend_for(device), timedelta(seconds=spec.init_timeout_s),
                            device if device.type == "cuda" else None)
        self.runner = build_runner(config, device=device, ctx=ctx,
                                   agree_num_blocks=lambda n: all_reduce_min(n, ctx, device))
        blocks = self.runner.num_blocks
        model = self.runner.model
        self.server = StepServer(self.rank, node_ip(), spec.token)
        self.thread = threading.Thread(target=self._serve, args=(spec.init_timeout_s,),
                                       name=f"tp-rank-{self.rank}", daemon=True)
        self.thread.start()
        logger.info("rank %d/%d ready: %d KV blocks, step channel on %s", self.rank,
                    self.tp_size, blocks, self.server.address)
        host_tier = self.runner.host_tier
        return WorkerInfo(self.rank, blocks, model.config.max_position_embeddings,
                          self.server.address, self.runner.num_host_blocks,
                          host_tier.bytes_per_block if host_tier is not None else 0)

    def _serve(self, accept_timeout_s: float) -> None:
        assert self.server is not None and self.runner is not None
        if self.runner.device.type == "cuda":
            torch.cuda.set_device(self.runner.device)  # the current device is per thread
        try:
            conn = self.server.accept(accept_timeout_s)
        except OSError:
            logger.exception("rank %d: the engine never connected", self.rank)
            return
        self.server.serve(conn, self._handle)
        logger.info("rank %d: step channel closed", self.rank)

    def _handle(self, message: StepInput | ComputeLogits) -> StepOutput | torch.Tensor | None:
        assert self.runner is not None
        if isinstance(message, ComputeLogits):
            logits, _request_ids = self.runner.compute_logits(message.step)
            return logits.cpu() if self.rank == 0 else None
        return self.runner.execute(message)

    def ping(self, payload: object = None) -> int:
        """Health check (and the per-rank Ray call the step channel replaces, in benches)."""
        return self.rank

    def report(self) -> ShardReport:
        assert self.runner is not None, "init() first"
        params = {name: digest(p) for name, p in self.runner.model.named_parameters()}
        size = sum(p.numel() * p.element_size() for p in self.runner.model.parameters())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return ShardReport(self.rank, self.tp_size, params, size, peak,
                           _status_bytes("RssAnon"),
                           ray.get_runtime_context().get_placement_group_id())
