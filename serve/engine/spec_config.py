"""Speculative decoding settings, named as vLLM names them (``speculative_config``).

Example: ``LLM(model, speculative_config={"method": "ngram", "num_speculative_tokens": 4})``
or ``mistral-serve up --speculative-config '{"method": "suffix"}'``. Drafts are proposed
without a model (prompt n-grams, suffix trees) and verified exactly by the target model, so
greedy output is token-identical with and without speculation and sampled output follows
the target's distribution.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The CPU attention kernel runs rows of up to 8 query tokens in its paged path: the bonus
# token plus 7 drafts is the most a verification row holds there.
MAX_SPECULATIVE_TOKENS = 7


class SpeculativeConfig(BaseModel):
    """``method``: ``ngram`` looks the last ``prompt_lookup_max``..``prompt_lookup_min``
    tokens up in the request's own tokens and proposes what followed; ``suffix`` matches the
    longest recent suffix in a tree over the request's tokens and one over recent outputs
    of other requests, and follows its most frequent continuation.

    ``disable_by_batch_size``: no drafts while this many requests or more run (a step is
    then compute-bound, and every rejected draft would cost throughput). ``adaptive``: each
    request's draft length follows its acceptance (it grows while drafts are accepted and
    shrinks, then pauses, when they are not)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)
    section: ClassVar[str] = "speculative_config"

    method: Literal["ngram", "suffix"] = "ngram"
    num_speculative_tokens: int = Field(4, ge=1, le=MAX_SPECULATIVE_TOKENS)
    prompt_lookup_min: int = Field(2, ge=1)
    prompt_lookup_max: int = Field(5, ge=1)
    disable_by_batch_size: int = Field(8, ge=1)
    adaptive: bool = True
    # Suffix decoding (vLLM's names): the deepest pattern the trees keep, how many finished
    # requests' outputs the global tree holds, and the least probability a proposed token
    # may have along the proposed path.
    suffix_decoding_max_tree_depth: int = Field(24, ge=2)
    suffix_decoding_max_cached_requests: int = Field(1000, ge=0)
    suffix_decoding_min_token_prob: float = Field(0.1, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> SpeculativeConfig:
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(f"prompt_lookup_min ({self.prompt_lookup_min}) exceeds "
                             f"prompt_lookup_max ({self.prompt_lookup_max})")
        return self
