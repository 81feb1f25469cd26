"""The scale-out simulation of ``bench/scaleout.py``: keys are the unit of parallelism (one key, one
worker), so uniform keys scale almost linearly, one key not at all, a 5% hot key caps the speedup
near 20x; the hash assignment is stable; the report only reads recorded work."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pandas as pd
import pytest

from bench import scaleout as so


def uniform(n_keys: int, per_key: int = 3, cost: float = 1e-3) -> list[tuple[str, float]]:
    """Round-robin over n_keys keys, per_key events each, equal cost."""
    return [(f"k{i}", cost) for _ in range(per_key) for i in range(n_keys)]


def test_uniform_keys_scale_about_linearly() -> None:
    work = uniform(10_000)
    base = so.simulate_step(work, 1).events_per_s
    assert base == pytest.approx(1000.0)  # 1 ms per event on one worker
    for p in (4, 16, 64):
        hashed = so.simulate_step(work, p, "hash").events_per_s / base
        greedy = so.simulate_step(work, p, "greedy").events_per_s / base
        assert greedy == pytest.approx(p, rel=1e-2)  # 10,000 keys: 157 on some of 64
        assert 0.75 * p < hashed <= p  # crc32 spreads 10,000 keys within 25% of even
    assert so.simulate_step(work, 64).events == len(work)


def test_one_key_does_not_scale() -> None:
    work = so.global_key(uniform(1000))
    rates = [
        so.simulate_step(work, p, how).events_per_s
        for p in so.WORKERS
        for how in ("hash", "greedy")
    ]
    assert rates == pytest.approx([rates[0]] * len(rates))
    assert so.step_summary(work)["distinct_keys"] == 1
    assert so.step_summary(work)["hottest_key_share"] == 1.0


def test_fewer_keys_than_workers_caps_at_the_keys() -> None:
    work = uniform(8, per_key=10)
    assert so.simulate_step(work, 256, "greedy").events_per_s == pytest.approx(
        8 * so.simulate_step(work, 1).events_per_s
    )


def test_a_five_percent_hot_key_caps_speedup_near_20x() -> None:
    hot = so.with_hot_key(uniform(10_000))
    summary = so.step_summary(hot)
    assert summary["hottest_key_share"] == pytest.approx(0.05, abs=1e-4)
    assert summary["events"] == 30_000
    base = so.simulate_step(hot, 1).events_per_s
    greedy = [so.simulate_step(hot, p, "greedy").events_per_s / base for p in (16, 64, 256)]
    hashed = [so.simulate_step(hot, p, "hash").events_per_s / base for p in (16, 64, 256)]
    assert greedy[0] == pytest.approx(16, rel=1e-3)  # below the cap: still linear
    assert greedy[1] == pytest.approx(20, rel=1e-3)
    assert greedy[2] == pytest.approx(20, rel=1e-3)  # 4x the workers, no gain
    assert all(15 < h <= 20 for h in hashed[1:])  # the hot key's worker also has other keys
    section = so.hot_entity(uniform(10_000), "terminal")
    assert section["speedup_cap"] == pytest.approx(20, rel=1e-2)
    assert max(section["speedup"]) <= 20


def test_hot_key_moves_an_even_share_and_keeps_seconds() -> None:
    work = [(f"k{i}", float(i)) for i in range(1000)]
    hot = so.with_hot_key(work, 0.05)
    moved = [i for i, (k, _) in enumerate(hot) if k == so.HOT_KEY]
    assert len(moved) == 50
    assert moved[:3] == [0, 20, 40]
    assert [s for _, s in hot] == [s for _, s in work]


def test_hash_assignment_is_deterministic() -> None:
    loads = so.key_loads(uniform(500))
    first = so.assign(loads, 64, "hash")
    assert first == so.assign(dict(reversed(list(loads.items()))), 64, "hash")
    assert first["k7"] == zlib.crc32(b"k7") % 64 == so.hash_worker("k7", 64)
    # The same in another interpreter (hash() would differ with PYTHONHASHSEED).
    code = "from bench.scaleout import hash_worker; print(hash_worker('k7', 64))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],  # this checkout's bench
    )
    assert int(other.stdout) == first["k7"]


def test_processing_order_does_not_change_a_backlog_makespan() -> None:
    work = [(f"k{i % 37}", 1e-3 * (1 + i % 5)) for i in range(2000)]
    for p in (4, 64):
        assert so.simulate_step(work, p).makespan == pytest.approx(
            so.simulate_step(list(reversed(work)), p).makespan
        )


def test_pipeline_is_the_slowest_step_in_input_events() -> None:
    fast = uniform(1000, per_key=2, cost=1e-3)  # 2,000 events, 2 s
    slow = so.global_key(uniform(10, per_key=100, cost=1e-3))  # 1,000 events, 1 s, one key
    rates = so.simulate_pipeline({"fast": fast, "slow": slow}, input_events=4000, workers=(1, 64))
    assert rates["slow"] == pytest.approx([1000.0, 1000.0])
    assert rates["fast"][0] == pytest.approx(1000.0)
    assert rates["pipeline"][0] == pytest.approx(4000 / 2.0)  # 1 worker: the fast step's 2 s
    assert rates["pipeline"][1] == pytest.approx(4000 / 1.0)  # 64 workers: the one key's 1 s


def test_report_from_recorded_work() -> None:
    steps: dict[str, list[tuple[str, float]]] = {"CustomerState": [], "TerminalState": []}
    for i in range(5000):
        steps["CustomerState"].append((f"c{i % 500}", 2e-4))
        steps["TerminalState"] += [(f"t{i % 1000}", 1e-4), (f"t{(i + 1) % 1000}", 1e-4)]
    result = so.report(steps, input_events=5000)
    json.dumps(result)  # serialisable
    assert set(result["stateful_steps"]) == {"CustomerState", "TerminalState"}
    assert result["stateful_steps"]["CustomerState"]["distinct_keys"] == 500
    assert result["stateful_steps"]["TerminalState"]["events"] == 10_000
    assert result["simulated_workers"] == [1, 4, 16, 64, 256]
    assert set(result["simulated_events_per_s"]) == {"CustomerState", "TerminalState", "pipeline"}
    pipeline = result["simulated_events_per_s"]["pipeline"]
    # Each step has its workers and both take 1 s on one: 5,000 input events in 1 s.
    assert pipeline[0] == pytest.approx(5000.0, rel=1e-3)
    assert result["global_key_events_per_s"] == pytest.approx([pipeline[0]] * 5, rel=1e-3)
    assert result["global_key_one_stage_events_per_s"] == pytest.approx(5000 / 2.0, rel=1e-3)
    assert 30 < result["speedup_64"] <= 64
    assert result["hot_entity"]["step"] == "TerminalState"
    assert result["hot_entity"]["speedup"][-1] <= 20


def test_empty_report_and_synthetic_work() -> None:
    assert so.report({}, 0)["stateful_steps"] == {}
    frame = pd.DataFrame(
        {"CUSTOMER_ID": [1, 1, 2], "TERMINAL_ID": [5, 6, 5], "TRANSACTION_ID": [0, 1, 2]}
    )
    work = so.synthetic_work(frame)
    assert work["synthetic_customer"] == [("1", so.SYNTHETIC_COST_S)] * 2 + [
        ("2", so.SYNTHETIC_COST_S)
    ]
    assert so.step_summary(work["synthetic_terminal"])["distinct_keys"] == 2


def test_nothing_recorded_fails_unless_allowed(capsys: pytest.CaptureFixture[str]) -> None:
    run = {"events_published": 10, "transactions": 5, "wall_s": 1.0}
    with pytest.raises(SystemExit) as exited:
        so.final_result({}, run, allow_empty=False)
    assert exited.value.code == 1
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "no keyed stage recorded" in line["error"]
    empty = so.final_result({}, run, allow_empty=True)
    assert empty["stateful_steps"] == {}
    assert empty["measured"] == {**run, "recorded_seconds": 0}
    recorded = so.final_result({"TerminalState": uniform(100)}, run, allow_empty=False)
    assert recorded["measured"]["recorded_seconds"] == pytest.approx(0.3)
    assert recorded["stateful_steps"]["TerminalState"]["distinct_keys"] == 100


def test_recorded_work_round_trips(tmp_path: Path) -> None:
    steps = {"TerminalWindows": [("t1", 0.25), ("t2", 1e-4)], "IndexIds": [("x", 0.5)]}
    so.save_work(steps, tmp_path / "work.json.gz")
    assert so.load_work(tmp_path / "work.json.gz") == steps


def test_single_key_work_is_read_from_the_runner_models_attempt_log(tmp_path: Path) -> None:
    log = tmp_path / "attempts.jsonl"
    entries = [
        {
            "stage": "ComputeFeatures/IndexIds",
            "keys": ["42"],
            "outcome": "committed",
            "seconds": 0.004,
            "elements": 1,
            "timers": 0,
        },
        {
            "stage": "ComputeFeatures/IndexIds",
            "keys": ["42"],
            "outcome": "failed",
            "seconds": 0.002,
            "elements": 1,
            "timers": 0,
        },
        {
            "stage": "ComputeFeatures/IndexIds",
            "keys": ["43"],
            "outcome": "committed",
            "seconds": 0.001,
            "elements": 0,
            "timers": 1,
        },
        {
            "stage": "ComputeFeatures/TerminalWindows/ParDo(TerminalWindows)",
            "keys": ["7"],
            "outcome": "committed",
            "seconds": 0.030,
            "elements": 12,
            "timers": 0,
        },
        {
            "stage": "ParseTransactions",
            "keys": ["t1"],
            "outcome": "committed",
            "seconds": 0.001,
            "elements": 1,
            "timers": 0,
        },
    ]
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    work = so.single_key_work(log)
    # Committed work items of the stateful steps only; a timer firing is not an event's cost.
    assert work == {
        "IndexIds": [("42", 0.004, 1)],
        "CustomerWindows": [],
        "TerminalWindows": [("7", 0.030, 12)],
    }


def test_a_keys_ceiling_from_its_work_items() -> None:
    # 2 ms per item plus 0.1 ms per event: 1 event per item ~476/s, full items (100) 8,333/s.
    items = [(0.002 + 0.0001 * n, n) for n in (1, 5, 20, 50, 100)]
    ceiling = so.key_ceiling(items)
    assert ceiling["item_overhead_ms"] == pytest.approx(2.0, rel=1e-6)
    assert ceiling["per_event_ms"] == pytest.approx(0.1, rel=1e-6)
    assert ceiling["events_per_s_one_per_item"] == pytest.approx(476.2, rel=1e-3)
    assert ceiling["events_per_s_full_items"] == pytest.approx(8333.3, rel=1e-3)
    with pytest.raises(ValueError):
        so.key_ceiling(items[:2])
