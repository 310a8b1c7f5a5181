"""Block heads (DFlash, DSpark) in training: many blocks of a sequence in
one pass, and the start from copies of the target's last layers."""
from __future__ import annotations

import torch

from engine.spec.heads.block import BlockHead

# Block heads start with their final norm at this fraction of the target's.
INITIAL_OUTPUT_SCALE = 0.25


def blocks_for_anchors(head: BlockHead, feats: torch.Tensor, tokens: torch.Tensor,
                       anchors: torch.Tensor) -> torch.Tensor:
    """Many blocks of one sequence in one pass, each seeing only the
    context before its own anchor (exactly what serving sees).

    feats [T, A*H]; tokens [T] long; anchors [N] long token indices
    (>= 1: context is positions < anchor). Returns pre-norm hidden
    [N, block_inputs, H].
    """
    num_ctx = int(anchors.max())
    ctx_positions = torch.arange(num_ctx, device=tokens.device)
    ctx = head.context(feats[:num_ctx])
    ctx_kv = head.context_kv(ctx[None], ctx_positions[None])
    width, n = head.block_inputs, anchors.shape[0]
    offsets = torch.arange(width, device=tokens.device)
    positions = (anchors[:, None] + offsets).reshape(1, -1)
    block_of_row = torch.arange(n, device=tokens.device).repeat_interleave(width)
    sees_context = ctx_positions[None, :] < anchors[block_of_row][:, None]  # [N*W, C]
    same_block = block_of_row[:, None] == block_of_row[None, :]  # [N*W, N*W]
    mask = torch.cat([sees_context, same_block], dim=1)[None]
    inputs = head.block_embeddings(tokens[anchors][None], ctx[anchors - 1][None])
    hidden = head.block_forward(inputs, positions, ctx_kv, mask)
    return hidden.view(n, width, -1)


def block_hidden(head: BlockHead, feats: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The training recipe's pass: pre-norm hidden of the prediction rows [N, block_size, H]."""
    return blocks_for_anchors(head, feats, tokens, anchors)[:, head.prediction_rows]


def copy_target_layers(head: BlockHead, model) -> None:
    """Start the layers as copies of the target's last layers (a better
    start than random on a CPU budget) and the final norm as a scaled-down
    copy of the target's: the first logits are then near uniform instead
    of confidently wrong, which measurably speeds up early training."""
    target_layers = model.model.layers[-len(head.layers):]
    for own, src in zip(head.layers, target_layers):
        state = {k: v for k, v in src.state_dict().items() if k in own.state_dict()}
        own.load_state_dict(state, strict=False)
    with torch.no_grad():
        head.norm.weight.copy_(model.model.norm.weight * INITIAL_OUTPUT_SCALE)
