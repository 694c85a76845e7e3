"""bitttt.bench.harness: rotation, medians, validation before timing, wait-policy children, the record."""

from __future__ import annotations

import datetime
import json
import os
import sys

import pytest

from bitttt.bench import harness
from bitttt.bench.harness import BenchValidationError, Case, Contender, Settings

HERE = os.path.dirname(os.path.abspath(__file__))


def fixed_times(values: list[float]) -> Contender:
    """A self-timed contender whose calls 'take' the given seconds, in turn."""
    it = iter(values)
    return Contender("fixed", lambda: next(it), self_timed=True)


def test_rotation_moves_each_contender_through_every_position():
    assert [harness.rotation(3, r) for r in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_time_case_calls_contenders_in_rotating_order():
    calls: list[str] = []
    cs = [Contender(n, lambda n=n: calls.append(n)) for n in "abc"]
    seen: list[list[str]] = []
    results = harness.time_case(Case("x", cs), Settings(rounds=6, warmup=0), on_round=lambda r, o: seen.append(o))
    assert seen == [list("abc"), list("bca"), list("cab")] * 2
    assert calls == [n for order in seen for n in order]
    assert [r.rounds for r in results] == [6, 6, 6]


def test_median_min_max_of_the_rounds():
    c = fixed_times([0.003, 0.001, 0.002, 0.005, 0.004])
    (r,) = harness.time_case(Case("x", [c], unit="ms"), Settings(rounds=5, warmup=0))
    assert (r.median, r.min, r.max, r.rounds, r.unit) == pytest.approx((3.0, 1.0, 5.0, 5, "ms"))


def test_a_rate_takes_its_min_from_the_slowest_round():
    c = fixed_times([0.5, 0.25, 2.0, 1.0, 4.0])
    (r,) = harness.time_case(Case("x", [c], unit="tok/s", work=8), Settings(rounds=5, warmup=0))
    assert (r.median, r.min, r.max) == pytest.approx((8.0, 2.0, 32.0))


def test_a_rate_without_work_is_refused():
    with pytest.raises(harness.BitttError, match="no work per call"):
        harness.time_case(Case("x", [fixed_times([1.0] * 5)], unit="tok/s"), Settings(warmup=0))


def test_budget_adds_rounds_within_bounds():
    assert harness.choose_rounds(Settings(rounds=5), 1e-6) == 5  # no budget: the floor
    assert harness.choose_rounds(Settings(rounds=5, max_rounds=50, budget_s=1.0), 0.01) == 50
    assert harness.choose_rounds(Settings(rounds=5, max_rounds=50, budget_s=1.0), 0.1) == 10
    assert harness.choose_rounds(Settings(rounds=5, max_rounds=50, budget_s=1.0), 10.0) == 5


def test_a_failed_check_stops_the_run_before_any_timing():
    calls = []
    good = Contender("good", lambda: calls.append("good"), check=lambda: None)

    def wrong() -> None:
        raise ValueError("y[3] = 7, reference 1")

    bad = Contender("bad", lambda: calls.append("bad"), check=wrong)
    with pytest.raises(BenchValidationError, match="second: bad failed its check: y\\[3\\]"):
        harness.run_cases([Case("first", [good]), Case("second", [good, bad])], Settings())
    assert calls == []  # not even the first case, which was right, was timed


def test_prewarm_runs_an_untimed_call_before_each_timed_one():
    calls = []
    c = Contender("w", lambda: calls.append(1), prewarm=True)
    harness.time_case(Case("x", [c]), Settings(rounds=5, warmup=0))
    assert len(calls) == 10


def test_cold_copies_reach_the_target_bytes():
    copies = harness.cold_copies([1], 300, list, cold_bytes=1000)
    assert len(copies) == 4 and copies[0] is not copies[1]
    assert len(harness.cold_copies([1], 5000, list, cold_bytes=1000)) == 1  # one copy that large is cold alone
    cyc = harness.Cycle("abc")
    assert [cyc.next() for _ in range(4)] + [cyc.again()] == list("abcaa")


@pytest.mark.parametrize("env, policy", [
    ({}, "default"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "passive"), ({"OMP_WAIT_POLICY": "active"}, "active"),
    ({"GOMP_SPINCOUNT": "30000", "KMP_BLOCKTIME": "1"}, "spin"), ({"GOMP_SPINCOUNT": "5"}, "other")])
def test_current_wait_policy(env, policy):
    assert harness.current_wait_policy(env) == policy


def child_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.mark.parametrize("policy, expected", [("active", "ACTIVE"), ("passive", "PASSIVE")])
def test_a_child_runs_under_the_wait_policy_asked_for(policy, expected, monkeypatch):
    child_env(monkeypatch)
    monkeypatch.setenv("OMP_WAIT_POLICY", "SOMETHING_ELSE")  # this process's own must not leak
    child = harness.Child("harness_factories:policy_probe", {"sleep_s": 0.01}, policy)
    try:
        c = child.contender("probe", "probe")
        assert c.check()["result"] == expected
        (r,) = harness.time_case(Case("x", [c], wait_policy=policy, unit="ms"), Settings(rounds=5, warmup=0))
        assert r.wait_policy == policy and 10 <= r.min <= r.median <= r.max
        assert r.extra["omp_env"] == harness.WAIT_POLICIES[policy]
        assert r.extra["bytes_per_call"] == 1234  # the child's contender's own extra comes along
    finally:
        child.close()
    assert child.proc.returncode == 0


def test_a_childs_failed_check_is_a_validation_error(monkeypatch):
    child_env(monkeypatch)
    child = harness.Child("harness_factories:wrong_output", {}, "passive")
    try:
        with pytest.raises(BenchValidationError, match="reference 2"):
            harness.run_cases([Case("x", [child.contender("bad", "bad")])], Settings())
    finally:
        child.close()


def test_peaks_never_give_more_than_100_percent():
    passes = iter([{"read_gbs": {1: 10.0}}, {"read_gbs": {1: 8.0}}, {"read_gbs": {1: 12.0}},
                   {"read_gbs": {1: 11.0}}])
    peaks = harness.Peaks([1], measure=lambda t: next(passes))
    assert peaks.get("read_gbs", 1) == 10.0  # best of the two passes
    assert peaks.percent(5.0, "read_gbs", 1) == pytest.approx(50.0)
    assert peaks.percent(11.0, "read_gbs", 1) == pytest.approx(100 * 11 / 12)  # re-measured: 12
    assert peaks.exceeded == []
    assert peaks.percent(13.0, "read_gbs", 1) == pytest.approx(100.0)  # re-measured 11: still above
    assert peaks.get("read_gbs", 1) == 13.0
    assert peaks.to_json()["exceeded"] == [{"key": "read_gbs", "threads": 1, "measured_peak": 12.0, "rate": 13.0}]
    assert peaks.percent(1.0, "int8_avx2_gmacs", 1) is None


def test_the_record_has_every_field(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bitttt", "bench", "x", "--quick"])
    peaks = harness.Peaks([1, 2], measure=lambda t: {"read_gbs": {n: 5.0 * n for n in t}})
    rec = harness.Record("x", {"quick": True}, peaks)
    (r,) = harness.time_case(Case("case", [fixed_times([1.0] * 5)], threads=1, unit="s", extra={"M": 1}),
                             Settings(warmup=0))
    path = tmp_path / "sub" / "x.json"
    rec.finish([r]).write(str(path))
    d = json.loads(path.read_text())
    assert harness.check_record(d) == []
    assert d["schema"] == "bitttt-bench/1" and d["bench"] == "x" and d["command"] == "bitttt bench x --quick"
    assert datetime.datetime.fromisoformat(d["date"]).tzinfo is not None
    assert len(d["load_before"]) == 3 and len(d["load_after"]) == 3
    assert d["machine"]["peaks"] == {"read_gbs": {"1": 5.0, "2": 10.0}} and d["machine"]["cores"] == os.cpu_count()
    assert d["machine"]["cpu"] and isinstance(d["machine"]["isa"], list)
    assert d["versions"]["torch"] and "bitttt" in d["versions"]
    assert d["cases"] == [{"case": "case", "contender": "fixed", "threads": 1, "wait_policy": r.wait_policy,
                           "median": 1.0, "min": 1.0, "max": 1.0, "unit": "s", "rounds": 5, "M": 1}]
    del d["cases"][0]["median"], d["load_after"]
    assert harness.check_record(d) == ["load_after", "cases[0].median"]


def test_hosts_build_in_process_only_for_this_process_policy(monkeypatch):
    child_env(monkeypatch)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    with harness.Hosts() as hosts:
        here = hosts.build("harness_factories:policy_probe", {}, "passive")
        there = hosts.build("harness_factories:policy_probe", {}, "active")
        assert len(hosts.children) == 1 and here["probe"].wait_policy == "passive"
        assert here["probe"].check() == "PASSIVE" and there["probe"].check()["result"] == "ACTIVE"
        (child,) = hosts.children
    assert child.proc.returncode == 0  # closed on leaving the block
