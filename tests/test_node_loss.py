"""The driver's decision after a node is lost (``distfair.distributed.runner.lost_node_reason``)
without Ray (what the slots then do with their items is in tests/test_slots.py); the real node loss is in
tests/test_multinode.py."""
from __future__ import annotations

from distfair.distributed.runner import lost_node_reason

HEAD = {"NodeID": "aaaaaaaa" + "0" * 48, "NodeManagerAddress": "10.0.0.1",
        "Resources": {"distfair_trial": 1000.0, "memory": 1e9, "node:10.0.0.1": 1.0}}
W1 = {"NodeID": "bbbbbbbb" + "1" * 48, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 1.0, "memory": 1e9}}
W2 = {"NodeID": "cccccccc" + "2" * 48, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 1.0, "memory": 1e9}}
BIG = {"NodeID": "dddddddd" + "3" * 48, "NodeManagerAddress": "10.0.0.4", "Resources": {"CPU": 4.0}}


def scaling(num_workers=2, cpu=1.0, strategy="PACK"):
    return {"num_workers": num_workers, "resources_per_worker": {"CPU": cpu}, "use_gpu": False,
            "placement_strategy": strategy}


def test_no_node_lost_is_no_reason_even_if_the_group_does_not_fit():
    assert lost_node_reason([HEAD, W1], [HEAD, W1], scaling(num_workers=4)) is None


def test_a_lost_node_whose_group_still_fits_elsewhere_is_left_to_ray_train():
    assert lost_node_reason([HEAD, W1, W2], [HEAD, W2], scaling(num_workers=1)) is None
    assert lost_node_reason([HEAD, W1, W2], [HEAD, W2, BIG], scaling(num_workers=2)) is None   # a node joined


def test_a_lost_node_the_group_needed_names_the_node_and_the_resources():
    reason = lost_node_reason([HEAD, W1, W2], [HEAD, W2], scaling())
    assert reason == ("node bbbbbbbb (10.0.0.2) was lost; a worker group needs 2 worker(s) x {CPU: 1.0} and the "
                      "alive nodes have aaaaaaaa (10.0.0.1) {CPU: 0.0}, cccccccc (10.0.0.3) {CPU: 1.0}")


def test_every_worker_node_lost():
    reason = lost_node_reason([HEAD, W1], [HEAD], scaling(num_workers=1, cpu=0.5))
    assert reason.startswith("node bbbbbbbb (10.0.0.2) was lost; a worker group needs 1 worker(s) x {CPU: 0.5}")


def test_workers_must_fit_on_nodes_not_just_in_the_total():
    # 2 x 1 CPU on nodes of 1.5 and 0.5 CPU: 2 CPUs in total, yet only one worker fits
    a = {**W1, "Resources": {"CPU": 1.5}}
    b = {**W2, "Resources": {"CPU": 0.5}}
    assert "was lost" in lost_node_reason([HEAD, a, b, BIG], [HEAD, a, b], scaling())
    # STRICT_SPREAD: one worker per node, so the 4-CPU node alone no longer holds 2 workers
    assert "was lost" in lost_node_reason([HEAD, W1, BIG], [HEAD, BIG], scaling(strategy="STRICT_SPREAD"))
    assert lost_node_reason([HEAD, W1, BIG], [HEAD, BIG], scaling(strategy="PACK")) is None
