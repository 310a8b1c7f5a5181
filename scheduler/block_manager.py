"""Bookkeeping of the paged KV cache: which block belongs to whom (no tensors).

A block holds the KV of `block_size` consecutive token positions. Blocks are
ref-counted so that requests with a common prompt prefix can share the full
blocks of that prefix. A full block whose tokens all have KV gets a content
hash chained from its parent's; once its last owner frees it, it stays
matchable in an evictable list until a new allocation needs the space.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict, deque

BlockHash = bytes

# The chain starts from a fixed digest so that the first block is hashed the
# same way as every other one.
_ROOT_HASH: BlockHash = b"\x00" * 32


def hash_block(parent_hash: BlockHash, token_ids: list[int]) -> BlockHash:
    """Digest of (parent block hash, the block's token ids).

    sha256 rather than Python's hash(): the built-in is unkeyed for ints, so a
    crafted prompt could collide with another user's prefix and read its KV.
    """
    payload = parent_hash + array("q", token_ids).tobytes()
    return hashlib.sha256(payload).digest()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """Ref-counted fixed-size KV blocks, a free list and per-request block tables.

    Free blocks live in two queues: never-hashed ("plain") blocks, used first,
    and hashed blocks still matchable by prefix, evicted least recently freed
    first. Both count as free.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref_counts = [0] * num_blocks
        self._block_hash: list[BlockHash | None] = [None] * num_blocks
        self._plain_free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._cached: dict[BlockHash, int] = {}
        self._tables: dict[str, list[int]] = {}
        # Hash chain of each request's leading full, computed blocks.
        self._request_hashes: dict[str, list[BlockHash]] = {}

    # ---- queries -----------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._plain_free) + len(self._evictable)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by at least one request."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_block_ids(self, request_id: str) -> list[int]:
        return list(self._tables.get(request_id, ()))

    def has_blocks(self, request_id: str) -> bool:
        return bool(self._tables.get(request_id))

    def num_blocks_for(self, num_slots: int) -> int:
        return cdiv(num_slots, self.block_size)

    # ---- allocation --------------------------------------------------------

    def allocate_slots(self, request_id: str, num_slots: int) -> list[int] | None:
        """Grow the request's table to cover `num_slots` token slots.

        Returns the full table, or None (and changes nothing) when there are
        not enough free blocks: the caller decides whom to preempt.
        """
        table = self._tables.setdefault(request_id, [])
        missing = self.num_blocks_for(num_slots) - len(table)
        if missing > self.num_free_blocks:
            if not table:
                del self._tables[request_id]
            return None
        for _ in range(missing):
            table.append(self._take_free_block())
        return list(table)

    def trim(self, request_id: str, num_slots: int) -> None:
        """Release the blocks beyond what `num_slots` slots need (draft rollback)."""
        table = self._tables.get(request_id)
        if not table:
            return
        keep = self.num_blocks_for(num_slots)
        while len(table) > keep:
            self._release(table.pop())
        hashes = self._request_hashes.get(request_id)
        if hashes is not None:
            del hashes[keep:]

    def free(self, request_id: str) -> None:
        """Drop the request's table; blocks nobody else holds become free."""
        table = self._tables.pop(request_id, [])
        self._request_hashes.pop(request_id, None)
        # Tail first: its blocks are evicted before the prefix they extend.
        for block_id in reversed(table):
            self._release(block_id)

    def _take_free_block(self) -> int:
        if self._plain_free:
            block_id = self._plain_free.popleft()
        else:
            block_id, _ = self._evictable.popitem(last=False)
            self._forget_hash(block_id)
        self._ref_counts[block_id] = 1
        return block_id

    def _release(self, block_id: int) -> None:
        self._ref_counts[block_id] -= 1
        if self._ref_counts[block_id] > 0:
            return
        if self._block_hash[block_id] is None:
            self._plain_free.append(block_id)
        else:
            self._evictable[block_id] = None

    def _forget_hash(self, block_id: int) -> None:
        block_hash = self._block_hash[block_id]
        self._block_hash[block_id] = None
        if self._cached.get(block_hash) == block_id:
            del self._cached[block_hash]

    # ---- prefix caching ----------------------------------------------------

    def match_prefix(self, request_id: str, token_ids: list[int]) -> int:
        """Share cached blocks for the longest full-block prefix of a new request.

        Returns how many tokens the shared blocks cover; never all of
        `token_ids`, since the last token must be computed to get logits.
        """
        if not self.enable_prefix_caching:
            return 0
        assert not self._tables.get(request_id), f"{request_id} already holds blocks"
        table, hashes = [], []
        for block_hash in self._prefix_hashes(token_ids[:-1]):
            block_id = self._cached.get(block_hash)
            if block_id is None:
                break
            self._acquire_cached(block_id)
            table.append(block_id)
            hashes.append(block_hash)
        if table:
            self._tables[request_id] = table
            self._request_hashes[request_id] = hashes
        return len(table) * self.block_size

    def cache_computed_blocks(self, request_id: str, token_ids: list[int],
                              num_computed_tokens: int) -> None:
        """Register the hashes of full blocks whose tokens all have KV now."""
        table = self._tables.get(request_id)
        if not self.enable_prefix_caching or not table:
            return
        hashes = self._request_hashes.setdefault(request_id, [])
        num_full = min(num_computed_tokens // self.block_size, len(table))
        for index in range(len(hashes), num_full):
            parent = hashes[-1] if hashes else _ROOT_HASH
            block_hash = hash_block(parent, self._block_tokens(token_ids, index))
            hashes.append(block_hash)
            self._register(table[index], block_hash)

    def _prefix_hashes(self, token_ids: list[int]):
        parent = _ROOT_HASH
        for index in range(len(token_ids) // self.block_size):
            parent = hash_block(parent, self._block_tokens(token_ids, index))
            yield parent

    def _block_tokens(self, token_ids: list[int], index: int) -> list[int]:
        return token_ids[index * self.block_size:(index + 1) * self.block_size]

    def _acquire_cached(self, block_id: int) -> None:
        if self._ref_counts[block_id] == 0:
            del self._evictable[block_id]
        self._ref_counts[block_id] += 1

    def _register(self, block_id: int, block_hash: BlockHash) -> None:
        # An identical block computed separately stays private: one copy per
        # content is enough to match, and the map stays one-to-one.
        if block_hash in self._cached or self._block_hash[block_id] is not None:
            return
        self._block_hash[block_id] = block_hash
        self._cached[block_hash] = block_id

    # ---- integrity ---------------------------------------------------------

    def check_integrity(self) -> None:
        """Raise AssertionError describing the first inconsistency found."""
        self._check_tables()
        self._check_free_lists()
        self._check_hash_map()

    def _check_tables(self) -> None:
        holders = [0] * self.num_blocks
        for request_id, table in self._tables.items():
            assert len(set(table)) == len(table), f"{request_id} holds a block twice: {table}"
            for block_id in table:
                holders[block_id] += 1
            self._check_request_hashes(request_id, table)
        for block_id, count in enumerate(holders):
            assert self._ref_counts[block_id] == count, (
                f"block {block_id}: ref count {self._ref_counts[block_id]} != {count} tables")

    def _check_request_hashes(self, request_id: str, table: list[int]) -> None:
        hashes = self._request_hashes.get(request_id, [])
        assert len(hashes) <= len(table), f"{request_id}: more hashes than blocks"
        for block_id, block_hash in zip(table, hashes):
            own = self._block_hash[block_id]
            assert own is None or own == block_hash, (
                f"{request_id}: block {block_id} hash differs from the request's chain")

    def _check_free_lists(self) -> None:
        plain, evictable = list(self._plain_free), list(self._evictable)
        free = set(plain + evictable)
        assert len(free) == len(plain) + len(evictable), "a block is listed free twice"
        for block_id in range(self.num_blocks):
            is_free = block_id in free
            assert is_free != (self._ref_counts[block_id] > 0), (
                f"block {block_id}: free={is_free} but ref count {self._ref_counts[block_id]}")
        assert all(self._block_hash[b] is None for b in plain), "a plain free block has a hash"
        assert all(self._block_hash[b] is not None for b in evictable), (
            "an evictable block has no hash")

    def _check_hash_map(self) -> None:
        for block_hash, block_id in self._cached.items():
            assert self._block_hash[block_id] == block_hash, (
                f"hash map points at block {block_id}, which holds another hash")
        hashed = [b for b in range(self.num_blocks) if self._block_hash[b] is not None]
        assert len(hashed) == len(self._cached), "a hashed block is missing from the hash map"
