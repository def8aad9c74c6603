"""Precision chosen by a probe of the run's own step: the decision, its cache, the step."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from medmm.training import precision as prec
from medmm.training.lightning_run import PRECISION_TAG, log_precision_choice
from medmm.training.precision import (
    BF16,
    FLOAT32,
    choose_precision,
    probe_precision,
    training_step_probe,
)


class FakeMachine:
    """A clock and a step function whose float32 and bf16 steps take fixed times: the
    probe's decision without timing noise."""

    def __init__(self, float32_s: float, bf16_s: float, bf16_outlier_s: float | None = None):
        self.now, self.cost = 0.0, {False: float32_s, True: bf16_s}
        self.bf16_outlier_s = bf16_outlier_s
        self.calls = {False: 0, True: 0}

    def clock(self) -> float:
        return self.now

    def step(self, use_bf16: bool) -> None:
        self.calls[use_bf16] += 1
        first_timed_bf16 = use_bf16 and self.calls[True] == 2  # call 1 is untimed
        self.now += self.bf16_outlier_s if first_timed_bf16 and self.bf16_outlier_s else self.cost[use_bf16]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """The probe cache in a temp folder, never the real home; a CPU-only machine."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(prec, "machine_busy", lambda: False)  # quiet cores unless a test says otherwise
    return tmp_path / "xdg" / "medmm" / prec.CACHE_FILE


@pytest.mark.parametrize(("float32_s", "bf16_s", "expected"), [
    (1.0, 0.5, BF16),      # AMX-like: bf16 twice as fast
    (1.0, 1.3, FLOAT32),   # AVX512-BF16 without AMX: bf16 slower
    (1.0, 0.98, FLOAT32),  # within the margin: float32 is kept
])
def test_probe_keeps_the_faster_precision(float32_s, bf16_s, expected):
    machine = FakeMachine(float32_s, bf16_s)
    result = probe_precision(machine.step, clock=machine.clock, budget_s=100.0, min_rounds=3, max_rounds=5)
    assert result.precision == expected
    assert result.float32_step_s == pytest.approx(float32_s)
    assert result.bf16_step_s == pytest.approx(bf16_s)
    assert result.bf16_over_float32 == pytest.approx(bf16_s / float32_s)


def test_probe_uses_medians_and_its_time_budget():
    # one slow bf16 round (a neighbour's burst of load) does not outvote the others
    machine = FakeMachine(1.0, 0.5, bf16_outlier_s=30.0)
    result = probe_precision(machine.step, clock=machine.clock, budget_s=4.0, min_rounds=3, max_rounds=50)
    assert result.precision == BF16
    assert result.bf16_step_s == pytest.approx(0.5)
    # the outlier round alone spends the budget: the probe stops at min_rounds
    assert result.rounds == 3
    assert machine.calls == {False: 6, True: 6}  # three rounds of an untimed and a timed step each


def _counting_step_factory(machine: FakeMachine, made: list):
    def make_step():
        made.append(1)
        return machine.step
    return make_step


def test_probe_result_is_cached_per_step_fingerprint(private_cache):
    machine, made = FakeMachine(1.0, 0.5), []
    options = {"clock": machine.clock, "budget_s": 10.0}
    first = choose_precision(None, _counting_step_factory(machine, made), "model-a", **options)
    assert (first.precision, first.source) == (BF16, "probe")
    assert first.figures["bf16_over_float32"] == pytest.approx(0.5)
    assert private_cache.exists()

    again = choose_precision(None, _counting_step_factory(machine, made), "model-a", **options)
    assert (again.precision, again.source, again.figures) == (BF16, "cached-probe", first.figures)
    assert len(made) == 1  # the cached result was reused: no second probe

    slower_bf16 = FakeMachine(1.0, 2.0)
    other = choose_precision(None, _counting_step_factory(slower_bf16, made), "model-b", clock=slower_bf16.clock)
    assert (other.precision, other.source) == (FLOAT32, "probe")
    assert len(made) == 2
    assert len(json.loads(private_cache.read_text())) == 2


def test_a_probe_taken_on_busy_cores_is_used_but_not_cached(private_cache, monkeypatch):
    machine, made = FakeMachine(float32_s=1.0, bf16_s=0.5), []
    monkeypatch.setattr(prec, "machine_busy", lambda: True)
    first = choose_precision(None, _counting_step_factory(machine, made), "model-a", clock=machine.clock)
    again = choose_precision(None, _counting_step_factory(machine, made), "model-a", clock=machine.clock)
    assert first.precision == again.precision == BF16
    assert first.source == again.source == "probe-busy-uncached"
    assert len(made) == 2 and not private_cache.exists()


def test_cache_is_keyed_by_the_machine(private_cache, monkeypatch):
    machine, made = FakeMachine(1.0, 0.5), []
    choose_precision(None, _counting_step_factory(machine, made), "model-a", clock=machine.clock)
    identity = prec.cpu_identity()
    monkeypatch.setattr(prec, "cpu_identity", lambda: {**identity, "cpu_flags": identity["cpu_flags"] + " amx_bf16"})
    moved = choose_precision(None, _counting_step_factory(machine, made), "model-a", clock=machine.clock)
    assert moved.source == "probe"
    assert len(made) == 2


def test_an_unreadable_cache_is_probed_again(private_cache):
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text("{half-written")
    machine, made = FakeMachine(1.0, 0.5), []
    choice = choose_precision(None, _counting_step_factory(machine, made), "model-a", clock=machine.clock)
    assert choice.source == "probe"
    assert json.loads(private_cache.read_text())  # rewritten whole


def test_an_explicit_precision_skips_the_probe(private_cache):
    def never():
        raise AssertionError("the probe ran although the config sets the precision")

    choice = choose_precision("bf16-mixed", never, "model-a")
    assert (choice.precision, choice.source, choice.figures) == ("bf16-mixed", "config", {})
    assert not private_cache.exists()


def test_a_gpu_keeps_the_rule(private_cache, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    choice = choose_precision(None, lambda: pytest.fail("no probe on a GPU"), "model-a")
    assert (choice.precision, choice.source) == (BF16, "rule")
    assert not private_cache.exists()


def test_the_probed_step_trains_a_copy_and_leaves_the_rng_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    weights = [p.detach().clone() for p in model.parameters()]
    batch = {"x": torch.randn(4, 8)}
    rng = torch.get_rng_state()
    probed_models = []

    def loss_of(probed, b):
        probed_models.append(probed)
        return probed(b["x"]).square().mean()

    step = training_step_probe(model, loss_of, batch)
    step(False)
    step(True)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout in the probe drew from a forked RNG
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    copy = probed_models[0]
    assert copy is not model and probed_models == [copy, copy]
    assert not any(torch.equal(p, w) for p, w in zip(copy.parameters(), weights))  # the optimiser stepped


class RecordingClient:
    def __init__(self):
        self.tags, self.metrics = {}, {}

    def set_tag(self, run_id, key, value):
        self.tags[key] = value

    def log_metric(self, run_id, key, value, *args, **kwargs):
        self.metrics[key] = value


def test_the_choice_and_the_probe_figures_go_to_the_run():
    logger = SimpleNamespace(run_id="run-1", experiment=RecordingClient())
    machine = FakeMachine(1.0, 0.5)
    choice = choose_precision(None, lambda: machine.step, "model-a", clock=machine.clock)
    log_precision_choice(logger, choice)
    assert logger.experiment.tags == {PRECISION_TAG: BF16, f"{PRECISION_TAG}_source": "probe"}
    assert logger.experiment.metrics["precision_probe.bf16_over_float32"] == pytest.approx(0.5)
    assert logger.experiment.metrics["precision_probe.float32_step_s"] == pytest.approx(1.0)
