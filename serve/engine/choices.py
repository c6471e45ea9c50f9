"""Several choices for one prompt (``SamplingParams.n``).

The engine runs one sequence per request, so a request for ``n`` choices becomes ``n``
engine requests over the same prompt. They share the prompt's KV through the prefix cache:
the first choice registers its full prompt blocks when they are allocated, so the others
hit them (in the same step or later) and compute only the prompt's last, partial block.
Choice ``i`` samples with ``seed + i``, so it makes exactly the tokens of a single request
with that seed::

    n=3, seed=7, request "r"  →  "r.0" (seed 7), "r.1" (seed 8), "r.2" (seed 9)
"""

from __future__ import annotations

from dataclasses import replace

from model.sampling_params import MAX_SEED, MIN_SEED, SamplingParams
from serve.engine.request import RequestOutput

_SEED_RANGE = MAX_SEED - MIN_SEED + 1


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """One choice's parameters: a single choice, its own seed (wrapping within range)."""
    seed = params.seed
    if seed is not None:
        seed = (seed + index - MIN_SEED) % _SEED_RANGE + MIN_SEED
    return replace(params, n=1, seed=seed)


def choice_request_id(request_id: str, index: int, n: int) -> str:
    """The engine's key of a choice; a lone choice keeps the request's own id."""
    return request_id if n == 1 else f"{request_id}.{index}"


def merge_choices(request_id: str, outputs: list[RequestOutput]) -> RequestOutput:
    """The finished outputs of a request's choices (in index order) as one output. The
    prompt and its cache hit are the first choice's: the prompt is counted once."""
    first = outputs[0]
    completions = [replace(output.outputs[0], index=index)
                   for index, output in enumerate(outputs)]
    error = next((output.error for output in outputs if output.error), None)
    return RequestOutput(request_id, first.prompt, first.prompt_token_ids, completions,
                         all(output.finished for output in outputs), first.num_cached_tokens,
                         error)

