"""Seed layout over Ray Train worker groups (pure function, no cluster needed)."""
import pytest

from distfair.distributed.layout import InsufficientResources, concurrent_groups, plan_seed_groups


def scaling(num_workers=1, cpu=1.0, use_gpu=False, gpu=None, max_concurrent=None):
    res = {"CPU": cpu}
    if gpu is not None:
        res["GPU"] = gpu
    return {"num_workers": num_workers, "use_gpu": use_gpu, "resources_per_worker": res,
            "max_concurrent_seeds": max_concurrent}


def test_two_cores_one_worker_each_runs_two_groups():
    assert plan_seed_groups([0, 1, 2], scaling(), {"CPU": 2.0}) == [[0, 2], [1]]


def test_ddp_group_of_two_on_two_cores_runs_seeds_back_to_back():
    assert plan_seed_groups([0, 1, 2], scaling(num_workers=2), {"CPU": 2.0}) == [[0, 1, 2]]


def test_fractional_cpus_allow_more_groups():
    assert concurrent_groups(scaling(cpu=0.5), {"CPU": 2.0}) == 4
    assert plan_seed_groups([0, 1, 2], scaling(cpu=0.5), {"CPU": 2.0}) == [[0], [1], [2]]


def test_gpus_limit_groups_and_fractional_gpus_share():
    assert concurrent_groups(scaling(use_gpu=True), {"CPU": 16.0, "GPU": 4.0}) == 4
    assert concurrent_groups(scaling(use_gpu=True, gpu=0.25), {"CPU": 16.0, "GPU": 1.0}) == 4
    assert plan_seed_groups(list(range(5)), scaling(use_gpu=True), {"CPU": 16.0, "GPU": 5.0}) == [[s] for s in range(5)]


def test_max_concurrent_seeds_caps_groups():
    assert plan_seed_groups([0, 1, 2, 3], scaling(cpu=0.5, max_concurrent=2), {"CPU": 8.0}) == [[0, 2], [1, 3]]


def test_unplaceable_run_fails_loudly_instead_of_hanging():
    with pytest.raises(InsufficientResources, match="cluster has"):
        plan_seed_groups([0], scaling(num_workers=3), {"CPU": 2.0})
    with pytest.raises(InsufficientResources, match="GPU"):
        plan_seed_groups([0], scaling(use_gpu=True), {"CPU": 2.0})
    with pytest.raises(InsufficientResources, match="no single node"):
        plan_seed_groups([0], scaling(cpu=2.0), {"CPU": 2.0}, nodes=[{"CPU": 1.0}, {"CPU": 1.0}])


def test_gpu_resource_ignored_without_use_gpu():
    assert concurrent_groups(scaling(gpu=1.0), {"CPU": 2.0}) == 2
