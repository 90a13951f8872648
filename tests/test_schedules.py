import math

import pytest

from common.schedules import cosine_anneal, ema_momentum, step_decay, warmup_cosine


def test_warmup_cosine_end_points_and_midpoints():
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == 0.0
    assert warmup_cosine(5, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(150, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_cosine_anneal_temperature_one_to_a_tenth():
    assert cosine_anneal(0, 50, 1.0, 0.1) == 1.0
    assert cosine_anneal(25, 50, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_anneal(50, 50, 1.0, 0.1) == pytest.approx(0.1)


def test_step_decay():
    assert step_decay(79, [80], 3e-4) == 3e-4
    assert step_decay(80, [80], 3e-4) == pytest.approx(3e-5)
    assert step_decay(100, [30, 60], 1.0, 0.5) == 0.25


def test_ema_momentum_matches_byol_formula():
    base, total = 0.996, 1000
    for step in (0, 1, 250, 999, 1000):
        expected = 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2
        assert ema_momentum(step, total, base) == pytest.approx(expected, abs=1e-12)
    assert ema_momentum(0, total, base) == pytest.approx(base)
    assert ema_momentum(total, total, base) == pytest.approx(1.0)
