from __future__ import annotations

import itertools

import pytest

from pocketlm.common.errors import ConfigError
from pocketlm.train.budget import parse_budget, steps_for
from pocketlm.train.config import ScheduleConfig
from pocketlm.train.schedule import decay_start_step, lr_multiplier


def test_warmup_then_cosine_reaches_min():
    cfg = ScheduleConfig(kind="cosine", warmup_steps=10)
    mults = [lr_multiplier(s, 100, cfg, 0.1) for s in range(100)]
    assert mults[0] == pytest.approx(0.1) and mults[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(mults[10:]))
    assert mults[-1] == pytest.approx(0.1, abs=1e-3)


def test_wsd_is_flat_then_decays_linearly():
    cfg = ScheduleConfig(kind="wsd", warmup_steps=5, decay_fraction=0.2)
    mults = [lr_multiplier(s, 100, cfg, 0.0) for s in range(100)]
    assert all(m == 1.0 for m in mults[5:80])
    assert decay_start_step(100, cfg) == 80
    assert mults[99] == pytest.approx(0.0) and mults[89] == pytest.approx(0.5)


def test_budgets():
    assert parse_budget("5m").kind == "time" and parse_budget("5m").amount == 300
    assert parse_budget("20M tokens").amount == 20e6 and parse_budget("20M tokens").kind == "tokens"
    assert parse_budget("500 steps").kind == "steps"
    assert steps_for(parse_budget("1M tokens"), 4096) == 244
    with pytest.raises(ConfigError, match="cannot read budget"):
        parse_budget("forever")


def test_a_cpu_budget_is_a_time_budget_on_the_process_clock():
    budget = parse_budget("10m cpu")
    assert (budget.kind, budget.amount, budget.cpu) == ("time", 600, True)
    assert budget.describe().endswith("of CPU time")
    assert not parse_budget("10m").cpu
    with pytest.raises(ConfigError, match="'cpu' goes after a time"):
        parse_budget("500 steps cpu")


@pytest.mark.parametrize("bare", ["5", "30", "2.5"])
def test_a_budget_without_a_unit_is_refused_with_the_choices(bare):
    with pytest.raises(ConfigError, match=rf"budget '{bare}' has no unit: write {bare}s, {bare}m"):
        parse_budget(bare)
