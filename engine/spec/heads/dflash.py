"""DFlash: anchor + `block_size` masks; the mask rows predict the block."""
from __future__ import annotations

from engine.spec.heads.block import BlockHead


class DFlashHead(BlockHead):
    """DFlash: anchor + `block_size` masks; the mask rows predict the block."""

    @property
    def block_inputs(self) -> int:
        return self.config.block_size + 1

    @property
    def prediction_rows(self) -> slice:
        return slice(1, self.config.block_size + 1)
