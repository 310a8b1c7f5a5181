"""BlockManager: allocation, rollback, ref counts, prefix caching, integrity."""
import pytest

from scheduler.block_manager import BlockManager

BS = 4


def make(num_blocks=8, caching=True) -> BlockManager:
    return BlockManager(num_blocks, BS, enable_prefix_caching=caching)


def fill(bm: BlockManager, rid: str, tokens: list[int]) -> None:
    """Simulate a request whose tokens all got KV (match, allocate, register)."""
    matched = bm.match_prefix(rid, tokens)
    assert bm.allocate_slots(rid, len(tokens)) is not None
    bm.cache_computed_blocks(rid, tokens, len(tokens))
    bm.check_integrity()
    return matched


def test_allocate_grows_table_and_counts_blocks():
    bm = make()
    assert bm.allocate_slots("a", 1) == [0]
    assert bm.allocate_slots("a", 4) == [0]
    assert bm.allocate_slots("a", 9) == [0, 1, 2]
    assert bm.get_block_ids("a") == [0, 1, 2]
    assert bm.num_free_blocks == 5
    assert bm.usage == pytest.approx(3 / 8)
    bm.check_integrity()


def test_exhaustion_returns_none_and_changes_nothing():
    bm = make(num_blocks=4)
    bm.allocate_slots("a", 8)
    bm.allocate_slots("b", 4)
    assert bm.allocate_slots("b", 12) is None
    assert bm.allocate_slots("c", 8) is None
    assert bm.get_block_ids("b") == [2]
    assert bm.get_block_ids("c") == []
    assert bm.num_free_blocks == 1
    bm.check_integrity()


def test_free_returns_all_blocks():
    bm = make()
    bm.allocate_slots("a", 10)
    bm.free("a")
    bm.free("a")  # idempotent
    assert bm.num_free_blocks == 8 and bm.usage == 0.0
    assert bm.get_block_ids("a") == []
    bm.check_integrity()


def test_trim_releases_blocks_beyond_slots():
    bm = make()
    bm.allocate_slots("a", 16)
    bm.trim("a", 5)
    assert bm.get_block_ids("a") == [0, 1]
    assert bm.num_free_blocks == 6
    bm.trim("a", 8)  # never grows
    assert bm.get_block_ids("a") == [0, 1]
    bm.check_integrity()


def test_integrity_catches_corruption():
    bm = make()
    bm.allocate_slots("a", 4)
    bm._ref_counts[0] = 2
    with pytest.raises(AssertionError, match="ref count"):
        bm.check_integrity()
    bm = make()
    bm.allocate_slots("a", 4)
    bm._plain_free.append(0)
    with pytest.raises(AssertionError):
        bm.check_integrity()
    bm = make()
    bm._plain_free.append(3)
    with pytest.raises(AssertionError, match="twice"):
        bm.check_integrity()


def test_prefix_is_shared_with_ref_counts():
    bm = make()
    prompt = list(range(10))  # two full blocks and a partial one
    assert fill(bm, "a", prompt) == 0
    assert fill(bm, "b", prompt[:8] + [99, 98]) == 8
    shared = bm.get_block_ids("a")[:2]
    assert bm.get_block_ids("b")[:2] == shared
    assert [bm._ref_counts[b] for b in shared] == [2, 2]
    assert bm.num_free_blocks == 8 - 4
    bm.free("a")
    assert [bm._ref_counts[b] for b in shared] == [1, 1]
    bm.check_integrity()


def test_match_stops_at_first_differing_block():
    bm = make()
    fill(bm, "a", list(range(12)))
    other = [0, 1, 2, 3, 40, 5, 6, 7, 8, 9, 10, 11, 12]
    # Same third block content, but a different parent: no match past block 0.
    assert bm.match_prefix("b", other) == 4


def test_match_never_covers_whole_sequence():
    bm = make()
    prompt = list(range(8))
    fill(bm, "a", prompt)
    assert bm.match_prefix("b", prompt) == 4  # the last token must be computed
    bm.free("b")
    assert bm.match_prefix("c", prompt + [8]) == 8
    bm.check_integrity()


def test_freed_blocks_stay_matchable_until_reused():
    bm = make(num_blocks=4)
    prompt = list(range(9))
    fill(bm, "a", prompt)
    bm.free("a")
    assert bm.num_free_blocks == 4
    assert fill(bm, "b", prompt) == 8
    bm.free("b")
    # Plain free blocks are used before cached ones.
    bm.allocate_slots("c", 4)
    assert bm.match_prefix("d", prompt) == 8
    bm.check_integrity()


def test_eviction_takes_least_recently_freed_first():
    bm = make(num_blocks=4)
    fill(bm, "a", [1, 1, 1, 1, 0])
    fill(bm, "b", [2, 2, 2, 2, 0])
    bm.free("a")
    bm.free("b")
    bm.allocate_slots("c", 4 * 3)  # two plain blocks, then evicts a's cached block
    bm.check_integrity()
    assert bm.match_prefix("x", [1, 1, 1, 1, 0]) == 0
    assert bm.match_prefix("y", [2, 2, 2, 2, 0]) == 4
    bm.check_integrity()


def test_tail_blocks_are_evicted_before_their_prefix():
    bm = make(num_blocks=3)
    fill(bm, "a", list(range(12)))
    bm.free("a")
    bm.allocate_slots("c", 4)
    bm.check_integrity()
    assert bm.match_prefix("x", list(range(13))) == 8


def test_matched_cached_block_leaves_evictable_list():
    bm = make(num_blocks=2)
    fill(bm, "a", [5, 5, 5, 5, 6])
    bm.free("a")
    assert bm.match_prefix("b", [5, 5, 5, 5, 7]) == 4
    assert bm.num_free_blocks == 1
    assert bm.allocate_slots("c", 8) is None
    bm.check_integrity()


def test_identical_blocks_computed_apart_keep_one_cache_entry():
    bm = make()
    bm.allocate_slots("a", 5)
    bm.allocate_slots("b", 5)  # computed before a registered anything
    bm.cache_computed_blocks("a", [3] * 5, 5)
    bm.cache_computed_blocks("b", [3] * 5, 5)
    bm.check_integrity()
    bm.free("a")
    bm.free("b")
    bm.check_integrity()
    assert len(bm._cached) == 1


def test_cache_registers_only_full_computed_blocks():
    bm = make()
    tokens = list(range(10))
    bm.allocate_slots("a", 10)
    bm.cache_computed_blocks("a", tokens, 7)
    assert len(bm._cached) == 1
    bm.cache_computed_blocks("a", tokens, 10)
    assert len(bm._cached) == 2
    bm.check_integrity()


def test_prefix_caching_off():
    bm = make(caching=False)
    fill(bm, "a", list(range(9)))
    assert bm.match_prefix("b", list(range(9))) == 0
    assert not bm._cached
