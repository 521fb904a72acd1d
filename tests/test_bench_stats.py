"""The benchmark's statistics on hand-made numbers."""

from __future__ import annotations

import pytest

from specdec.bench.stats import expected_tokens_per_step, paired_ratio, percentile, predicted_speedup, summarise


def test_percentiles_interpolate_between_ranks() -> None:
    latencies = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(latencies, 0) == 10.0
    assert percentile(latencies, 50) == 30.0
    assert percentile(latencies, 95) == pytest.approx(48.0)  # rank 3.8: 40 + 0.8 * 10
    assert percentile(latencies, 100) == 50.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(latencies, 101)


def test_summary_across_iterations() -> None:
    s = summarise([12.0, 10.0, 14.0, 11.0])
    assert (s.n, s.mean, s.median, s.min, s.max) == (4, 11.75, 11.5, 10.0, 14.0)
    assert s.std == pytest.approx(1.7078, abs=1e-4)  # sample standard deviation
    assert s.p50 == s.median
    assert s.p99 == pytest.approx(13.94)
    assert summarise([3.0]).std == 0.0


def test_paired_ratio_cancels_a_slow_phase() -> None:
    # the machine slows down by half in round 2 for both methods: pairs see 2x every time
    method, baseline = [20.0, 10.0, 20.0], [10.0, 5.0, 10.0]
    assert paired_ratio(method, baseline) == 2.0
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_leviathan_prediction() -> None:
    assert expected_tokens_per_step(0.0, 4) == 1.0
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert expected_tokens_per_step(0.5, 2) == pytest.approx(1.75)
    # alpha 0.8, K 4: E = 3.3616; step = 4 * 2 + 100 + 2 = 110 ms vs 70 ms per target token
    assert predicted_speedup(0.8, 4, 2.0, 100.0, 2.0, 70.0) == pytest.approx(3.3616 * 70 / 110)
    assert predicted_speedup(0.0, 0, 0.0, 70.0, 0.0, 70.0) == 1.0  # target-only predicts itself
    with pytest.raises(ValueError):
        expected_tokens_per_step(1.5, 2)
