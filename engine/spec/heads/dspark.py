"""DSpark: the block backbone plus a Markov head and a confidence head."""
from __future__ import annotations

import torch
from torch import nn

from engine.models.inference_kernels import Linear, choose_kernel
from engine.spec.heads.block import BlockHead
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.token_rows import TokenRows

# Bigram rows kept per serving head (bfloat16 SmolLM2 with a 16,384-token
# draft vocabulary: 32 KiB a row, 32 MiB in all).
MARKOV_CACHE_ROWS = 1024


class DSparkHead(BlockHead):
    """DSpark: the anchor row predicts draft 1; a Markov head and a
    confidence head act sequentially on top of the parallel backbone.

    p_k(v) = softmax(U_k(v) + W1[x_{k-1}] @ W2[:, v]),
    c_k = sigmoid(w . [norm(h_k) ; W1[x_{k-1}]] + b).

    With a draft vocabulary of Vd tokens, v ranges over it, W2 is r x Vd
    and W1 has Vd + 1 rows: the last is shared by every previous token
    outside the draft vocabulary (only the anchor can be one). Rank 0
    switches the Markov head off (an ablation): no bigram term, and the
    confidence head sees norm(h_k) alone.
    """

    config_defaults = {"num_layers": 2, "markov_rank": 32}  # rank 32 keeps it near 25 MB on SmolLM2

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        r, out = config.markov_rank, config.output_size
        self.markov_in = nn.Embedding(out + (1 if config.draft_vocab_size else 0), r)  # W1
        self.markov_out = nn.Parameter(torch.zeros(r, out))  # W2, starts as no bias
        nn.init.normal_(self.markov_in.weight, std=0.02)
        self.confidence = Linear(config.hidden_size + r, 1)
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)
        self._markov_kernel = None  # W2 packed for serving (use_inference_kernels)
        self._markov_rows: TokenRows | None = None  # its rows per previous token, once computed

    @classmethod
    def check_config(cls, config: HeadConfig) -> None:
        if config.markov_rank < 0:
            raise ValueError("dspark needs markov_rank >= 0 (0: no Markov head, an ablation)")

    @property
    def block_inputs(self) -> int:
        return self.config.block_size

    @property
    def prediction_rows(self) -> slice:
        return slice(0, self.config.block_size)

    def use_inference_kernels(self) -> None:
        """Also packs W2 as a linear layer (its transpose, [output_size, r]):
        drafting takes 7 sequential [1, r] x [r, output_size] products, and
        the plain bfloat16 matmul spent ~0.6 ms on each (4 of a block's ~17
        ms, tools.head_cost). The confidence head stays plain: a one-output
        product is quicker as a dot product than through oneDNN's call.

        The bigram term depends on the previous token alone, so each token's
        row is computed once and kept (`TokenRows`, the first
        MARKOV_CACHE_ROWS tokens asked for): the packed product read W2's
        4 MiB for every sequential draft (0.13 ms, about 5 a run at one
        stream; a kept row costs 0.02 ms), and drafts' previous tokens are
        mostly the same few hundred."""
        super().use_inference_kernels()
        self.confidence.kernel = None
        if self.config.markov_rank:
            self._markov_kernel = choose_kernel(self.markov_out.data.t().contiguous(), None, "head",
                                                batch_invariant=False)
            self._markov_rows = TokenRows(MARKOV_CACHE_ROWS)

    def markov_bias(self, prev_tokens: torch.Tensor) -> torch.Tensor:
        """prev_tokens [...] target ids -> bigram logits [..., output_size] float32."""
        ids = self.to_draft_ids(prev_tokens)
        if self._markov_kernel is not None and not torch.is_grad_enabled() \
                and not torch.is_autocast_enabled(ids.device.type):
            return self._markov_rows.lookup(ids, lambda some: self._markov_kernel(self.markov_in(some))).float()
        return (self.markov_in(ids) @ self.markov_out).float()

    def sequential_logits(self, logits: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        return logits + self.markov_bias(prev_tokens)

    def draft_confidence(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.confidence_logit(hidden, prev_tokens))

    def confidence_logit(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] pre-norm; prev_tokens [...] -> [...] (sigmoid gives c_k)."""
        features = torch.cat([self.norm(hidden), self.markov_in(self.to_draft_ids(prev_tokens))], dim=-1)
        return self.confidence(features).squeeze(-1).float()
