"""The llama.cpp engine's slot choice and the batching of concurrent calls, as plain functions (no model loaded)."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ember.engines.coalesce import Coalesced
from ember.engines.llamacpp import Slot, choose_slot

CHAT_A, CHAT_B, CHAT_C = [1, 2, 3] * 20, [4, 5, 6] * 20, [1, 2, 9] * 20


def slots() -> list[Slot]:
    return [Slot(0, list(CHAT_A), last_used=1.0), Slot(1), Slot(2), Slot(3, list(CHAT_B), last_used=2.0)]


def test_a_chat_returns_to_its_own_slot_and_others_keep_their_caches():
    all_slots = slots()
    slot, copy_from = choose_slot(all_slots, CHAT_B + [7])
    assert (slot.id, copy_from) == (3, None)
    # A chat sharing two tokens with A gets an empty slot instead of evicting A.
    slot, copy_from = choose_slot(all_slots, CHAT_C)
    assert (slot.id, copy_from) == (1, None)


def test_busy_slots_stay_together_and_a_shared_start_is_copied_over():
    all_slots = slots()
    all_slots[0].seq = object()  # slot 0 is generating
    slot, copy_from = choose_slot(all_slots, CHAT_B + [7])
    assert slot.id == 1 and copy_from is all_slots[3]  # next to the busy one, with B's cache copied in


def test_a_short_shared_start_is_not_worth_a_copy():
    all_slots = [Slot(0, [1, 2, 3], seq=object()), Slot(1), Slot(2)]
    slot, copy_from = choose_slot(all_slots, [1, 2, 8, 8])
    assert slot.id == 1 and copy_from is None


def test_concurrent_calls_are_combined_into_one_batch():
    release = threading.Event()
    batches: list[list[str]] = []

    def run(items: list[str]) -> list[str]:
        batches.append(items)
        if len(batches) == 1:
            release.wait(5)  # the first batch runs while the others arrive
        return [item.upper() for item in items]

    batched = Coalesced(run)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batched, ["a"])
        while not batched.busy:
            threading.Event().wait(0.001)
        rest = [pool.submit(batched, [word]) for word in ("b", "c", "d")]
        while batched.waiting < 3:
            threading.Event().wait(0.001)
        release.set()
        assert first.result() == ["A"] and [f.result() for f in rest] == [["B"], ["C"], ["D"]]
    assert batches == [["a"], ["b", "c", "d"]]


def test_an_error_reaches_every_call_in_the_batch():
    def run(items):
        raise ValueError("decode failed")

    with pytest.raises(ValueError, match="decode failed"):
        Coalesced(run)(["x"])
