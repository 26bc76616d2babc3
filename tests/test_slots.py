"""The slots' ledger (``distfair.distributed.slots.Ledger``) without Ray: idempotent leases, a
restarted group getting its item back, failures and cancellation item by item. The slots
themselves run in every Ray test (``distfair run`` and ``distfair sweep`` go through them)."""
from __future__ import annotations

import pytest

from distfair.distributed.slots import Ledger, scaling_key


def items(owner: str, *seeds: int) -> list[dict]:
    return [{"key": f"{owner}/seed{s}", "owner": owner, "seed": s} for s in seeds]


def test_items_are_leased_in_order_and_a_slot_asking_again_gets_its_item_back():
    ledger = Ledger()
    assert ledger.lease(0) == ("wait", None, 0)
    ledger.submit(items("a", 0, 1))
    kind, first, attempt = ledger.lease(0)
    assert (kind, first["seed"], attempt) == ("item", 0, 1)
    assert ledger.lease(1)[1]["seed"] == 1
    # slot 0's worker group was restarted by Ray Train: the same item, counted as a second attempt
    assert ledger.lease(0)[1:] == (first, 2)
    ledger.complete(0, "a/seed0", {"seed": 0, "acc": 1.0})
    assert ledger.lease(0) == ("wait", None, 0)
    ledger.close()
    assert ledger.lease(0) == ("stop", None, 0)
    assert not ledger.idle()                       # slot 1 still holds a/seed1
    ledger.complete(1, "a/seed1", {"seed": 1})
    assert ledger.idle() and ledger.results_of(["a/seed0", "a/seed1", "b/seed0"]) == {
        "a/seed0": {"seed": 0, "acc": 1.0}, "a/seed1": {"seed": 1}}


def test_a_key_submitted_twice_is_refused():
    ledger = Ledger()
    ledger.submit(items("a", 0))
    with pytest.raises(ValueError, match="a/seed0 submitted twice"):
        ledger.submit(items("a", 0))


def test_a_failed_slot_fails_only_the_item_it_held_and_the_next_lease_is_a_new_item():
    ledger = Ledger()
    ledger.submit(items("a", 0, 1))
    ledger.lease(0)
    assert ledger.fail_slot(0, "WorkerGroupError: boom") == "a/seed0"
    assert ledger.fail_slot(0, "again") is None                     # nothing held any more
    assert ledger.results_of(["a/seed0"]) == {"a/seed0": {"seed": 0, "failed": "WorkerGroupError: boom"}}
    assert ledger.lease(0)[1]["seed"] == 1


def test_a_late_duplicate_result_is_dropped():
    ledger = Ledger()
    ledger.submit(items("a", 0))
    ledger.lease(0)
    ledger.complete(0, "a/seed0", {"seed": 0, "v": 1})
    ledger.complete(0, "a/seed0", {"seed": 0, "v": 2})
    assert ledger.results_of(["a/seed0"])["a/seed0"]["v"] == 1


def test_a_cancelled_owner_loses_its_queued_items_and_its_leased_one_is_marked():
    ledger = Ledger()
    ledger.submit(items("t1", 0, 1) + items("t2", 0))
    ledger.lease(0)                                                    # t1/seed0 running
    assert sorted(ledger.cancel_owner("t1")) == ["t1/seed0", "t1/seed1"]
    assert ledger.is_cancelled("t1/seed0") and not ledger.is_cancelled("t2/seed0")
    assert ledger.results_of(["t1/seed1"]) == {"t1/seed1": {"seed": 1, "failed": "cancelled"}}
    assert "t1/seed0" not in ledger.results_of(["t1/seed0"])          # until its slot leaves it
    assert ledger.lease(1)[1]["key"] == "t2/seed0"                      # the cancelled one is skipped


def test_a_broken_ledger_fails_every_unfinished_item_and_every_later_one():
    ledger = Ledger()
    ledger.submit(items("a", 0, 1, 2))
    ledger.lease(0)
    ledger.complete(0, "a/seed0", {"seed": 0})
    ledger.lease(0)
    ledger.break_all("node x was lost")
    got = ledger.results_of(["a/seed0", "a/seed1", "a/seed2"])
    assert got["a/seed0"] == {"seed": 0}
    assert got["a/seed1"] == {"seed": 1, "failed": "node x was lost"}            # it was running
    assert got["a/seed2"] == {"seed": 2, "failed": "node x was lost"}            # it was queued
    ledger.submit(items("b", 5))
    assert ledger.results_of(["b/seed5"]) == {"b/seed5": {"seed": 5, "failed": "node x was lost"}}


def test_only_configurations_of_the_same_scaling_share_slots():
    base = {"num_workers": 1, "resources_per_worker": {"CPU": 1}, "use_gpu": False, "placement_strategy": "PACK",
            "max_failures": 1}
    assert scaling_key(base) == scaling_key(dict(base))
    assert scaling_key(base) != scaling_key({**base, "num_workers": 2})
    assert scaling_key(base) != scaling_key({**base, "resources_per_worker": {"CPU": 0.5}})
