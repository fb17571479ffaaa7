"""Planning worker-level scaling of packed batch jobs (pure; the real-Slurm side is in
tests/test_slurm_backend.py::test_packed_cluster_scales_by_worker_inside_jobs)."""

from __future__ import annotations

import pytest

from ctrlstack.deploy.batch.packing import group_suffixes, plan_scale


def _jobs(*sizes: int) -> dict[str, list[str]]:
    return {f"c-{i}": [f"c-{i}-{k}" for k in range(n)] for i, n in enumerate(sizes)}


def _all(live: dict[str, list[str]]) -> set[str]:
    return {w for ws in live.values() for w in ws}


def test_down_by_one_retires_a_single_worker_and_keeps_every_job() -> None:
    live = _jobs(2, 2)
    plan = plan_scale(live, _all(live), 3, per_job=2)
    assert plan.drop == []
    assert plan.add == []
    assert len(plan.retire) == 1
    assert plan.retire[0] in _all(live)
    assert plan.jobs_after() == 2


def test_down_empties_the_partly_used_job_first_then_retires_inside_the_other() -> None:
    live = {"c-0": ["c-0-0", "c-0-1"], "c-1": ["c-1-0"]}  # c-1 lost one worker already
    plan = plan_scale(live, _all(live), 1, per_job=2)
    assert plan.drop == ["c-1"]
    assert plan.retire == ["c-0-1"]
    assert plan.jobs_after() == 1


def test_down_to_zero_drops_every_job() -> None:
    live = _jobs(2, 1)
    plan = plan_scale(live, _all(live), 0, per_job=2)
    assert sorted(plan.drop) == ["c-0", "c-1"]
    assert plan.retire == []


def test_pending_jobs_go_before_running_ones_and_shrink_by_resubmission() -> None:
    live = _jobs(2, 2)
    connected = set(live["c-0"])  # c-1 is still pending
    plan = plan_scale(live, connected, 3, per_job=2)
    assert plan.drop == ["c-1"]
    assert plan.add == [1]
    assert plan.retire == []


def test_retire_prefers_connected_workers() -> None:
    live = _jobs(2)
    plan = plan_scale(live, {"c-0-0"}, 1, per_job=2)
    assert plan.retire == ["c-0-0"]


def test_up_adds_full_jobs_then_the_remainder_and_never_refills() -> None:
    live = {"c-0": ["c-0-0"]}
    plan = plan_scale(live, _all(live), 4, per_job=2)
    assert plan.add == [2, 1]
    assert plan.drop == []
    assert plan.retire == []
    assert plan.jobs_after() == 3


def test_nothing_to_do() -> None:
    live = _jobs(2, 2)
    plan = plan_scale(live, _all(live), 4, per_job=2)
    assert (plan.drop, plan.retire, plan.add) == ([], [], [])


@pytest.mark.parametrize(("n", "per_job"), [(-1, 2), (2, 0)])
def test_bad_input_is_refused(n: int, per_job: int) -> None:
    with pytest.raises(ValueError, match=">="):
        plan_scale({}, set(), n, per_job=per_job)


def test_group_suffixes_match_ctrlstack_worker_names() -> None:
    from ctrlstack.deploy.worker import worker_names

    for k in (1, 2, 3):
        assert ["c-0" + s for s in group_suffixes(k)] == worker_names("c-0", k)
