"""Smoke test of ``bench/windows.py`` with tiny sizes: the JSON line's shape and the correctness
check (engine vs Beam SlidingWindows on every window), including that it fails loudly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import windows as bw

PERIOD_US = 60 * bw.SECOND_US


@pytest.fixture(scope="module")
def dense() -> bw.Stream:
    # Whole seconds: ties and events exactly on window edges are common.
    return bw.make_stream(300, keys=3, days=0.05, seed=3, resolution_us=bw.SECOND_US)


def test_main_prints_one_json_object_last(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--events", "3000", "--ratios", "1,10", "--repeats", "1"]
    argv += ["--sliding-budget", "200", "--sliding-min", "10", "--check-events", "200"]
    bw.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["ratios"] == [1, 10]
    for field in ("engine_us_per_event", "sliding_us_per_event", "sliding_rekeyed_us_per_event"):
        assert len(result[field]) == 2
        assert all(isinstance(x, float) for x in result[field])
    assert result["sliding_n_events"] == [200, 20]
    assert result["engine_n_events"] == 3000
    assert "engine_ratio_10_vs_1" in result
    assert result["check"]["events"] == 200


def test_check_agrees_on_dense_windows(dense: bw.Stream) -> None:
    checked = bw.check(dense, 10, PERIOD_US)
    assert checked["max_count"] > 5  # windows hold several events, not just one


def test_engine_windows_match_beam_edges(dense: bw.Stream) -> None:
    window_us = 10 * PERIOD_US
    beam = bw.beam_windows(dense, window_us, PERIOD_US, "sliding")
    assert sum(c for c, _ in beam.values()) == len(dense) * 10
    assert bw.engine_windows(dense, sorted(beam), window_us) == beam
    # One microsecond off at both edges ((end - w, end] instead of [end - w, end)) is caught.
    shifted = [(k, end + 1) for k, end in sorted(beam)]
    moved = bw.engine_windows(dense, shifted, window_us)
    assert list(moved.values()) != [beam[kv] for kv in sorted(beam)]


def test_check_fails_loudly(dense: bw.Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bw.window_count_sum

    def off_by_one(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        count, total = real(*args, **kwargs)
        return count + 1, total

    monkeypatch.setattr(bw, "window_count_sum", off_by_one)
    with pytest.raises(SystemExit, match="disagree"):
        bw.check(dense, 10, PERIOD_US)
