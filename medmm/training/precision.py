"""The Lightning precision a training run gets when its config leaves it unset.

On a CPU the choice is measured: :func:`choose_precision` times a few optimisation steps of
the run's own model in float32 and under bf16 autocast (interleaved, medians, a budget of a
few seconds beyond a floor of three rounds of two steps per precision) and keeps bf16 only
where it is faster by a margin. A CPU flag does not settle it: on 2-core AMD EPYCs with AVX512-BF16 and no AMX, bf16 autocast has measured both slower (1.1-1.5x) and
faster (0.55-0.75x) than float32 for the default pretraining step
(``benchmarks/precision_probe.py``). The result is cached per machine (CPU model, CPU
flags, torch version, threads and the step's fingerprint) in ``$XDG_CACHE_HOME/medmm``
(``~/.cache/medmm`` when unset).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = [
    "PrecisionChoice",
    "ProbeResult",
    "StepFn",
    "choose_precision",
    "cpu_identity",
    "default_precision",
    "interleaved_step_times",
    "probe_precision",
    "rule_choice",
    "step_fingerprint",
    "training_step_probe",
]

FLOAT32, BF16 = "32-true", "bf16-mixed"
CACHE_FILE = "precision_probe.json"

# A step function runs one optimisation step, under bf16 autocast when its argument is True.
StepFn = Callable[[bool], None]


@dataclass(frozen=True)
class ProbeResult:
    """Median step times of the two precisions, the median of their per-round ratios and the
    precision the probe keeps."""

    precision: str
    float32_step_s: float
    bf16_step_s: float
    bf16_over_float32: float
    rounds: int

    def figures(self) -> dict[str, float]:
        return {"float32_step_s": self.float32_step_s, "bf16_step_s": self.bf16_step_s,
                "bf16_over_float32": self.bf16_over_float32, "rounds": float(self.rounds)}


@dataclass(frozen=True)
class PrecisionChoice:
    """A run's precision and why: ``config`` (set explicitly), ``rule`` (on a GPU, or where
    no probe runs), ``probe`` (measured now) or ``cached-probe`` (measured earlier on this
    machine for this step); ``figures`` holds the probe's medians."""

    precision: str
    source: str
    figures: dict[str, float] = field(default_factory=dict)


def default_precision() -> str:
    """The precision by rule alone, on a GPU and for runs that do not probe: ``bf16-mixed``
    on a GPU with bfloat16 (no loss scaling needed), ``16-mixed`` on an older GPU; on a CPU
    ``bf16-mixed`` where it computes bfloat16 natively (AVX512-BF16 or AMX tiles), else
    ``32-true`` (emulated bfloat16 is slower than float32)."""
    if torch.cuda.is_available():
        return BF16 if torch.cuda.is_bf16_supported() else "16-mixed"
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return BF16 if native_bf16 else FLOAT32


def rule_choice(configured: str | None) -> PrecisionChoice:
    """``configured`` when set, else :func:`default_precision`: the choice without a probe."""
    return PrecisionChoice(configured, "config") if configured else PrecisionChoice(default_precision(), "rule")


def interleaved_step_times(steps: dict[str, Callable[[], None]], *, min_rounds: int, max_rounds: int,
                           budget_s: float, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each named step, in rounds until ``budget_s`` is spent (at least
    ``min_rounds``, at most ``max_rounds``); the order rotates every round, so that a
    neighbour's load spreads over all steps. Each timed call follows an untimed call of the
    same step, which warms it up and keeps the cost of switching precision (buffers of the
    other dtype) out of the figures: training never switches."""
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    start = clock()
    for round_index in range(max_rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            steps[name]()
            before = clock()
            steps[name]()
            times[name].append(clock() - before)
        if round_index + 1 >= min_rounds and clock() - start >= budget_s:
            break
    return times


def probe_precision(step: StepFn, *, budget_s: float = 5.0, min_rounds: int = 3, max_rounds: int = 20,
                    margin: float = 0.05, clock: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """Times ``step(False)`` (float32) and ``step(True)`` (bf16 autocast) by
    :func:`interleaved_step_times` and keeps bf16 only if it is faster than float32 by more
    than ``margin``: by the median of the per-round ratios, since the two steps of a round
    share the machine's load of the moment."""
    times = interleaved_step_times({FLOAT32: lambda: step(False), BF16: lambda: step(True)},
                                   min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s, clock=clock)
    ratio = statistics.median(b / f for b, f in zip(times[BF16], times[FLOAT32]))
    precision = BF16 if ratio * (1.0 + margin) < 1.0 else FLOAT32
    return ProbeResult(precision, statistics.median(times[FLOAT32]), statistics.median(times[BF16]), ratio,
                       len(times[FLOAT32]))


def training_step_probe(model: torch.nn.Module, loss_of: Callable[[torch.nn.Module, dict], torch.Tensor],
                        batch: dict) -> StepFn:
    """A step function for :func:`probe_precision`: forward, ``loss_of(copy, batch)``,
    backward and an AdamW step of a copy of ``model`` on ``batch``. The copy keeps the probe
    from moving the run's weights; the global RNG is restored after each step, so the run
    draws what it would have drawn without a probe."""
    probe_model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW([p for p in probe_model.parameters() if p.requires_grad], lr=1e-4)

    def step(use_bf16: bool) -> None:
        with torch.random.fork_rng(devices=[]):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = loss_of(probe_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return step


def cpu_identity() -> dict[str, str]:
    """CPU model name and feature flags (from /proc/cpuinfo on Linux) and the torch version:
    what decides whether a cached probe still holds on this machine."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not flags:
                model = value.strip()
            elif key.strip() == "flags":
                flags = " ".join(sorted(value.split()))
                break
    except OSError:  # not Linux: the processor string stands for the machine
        pass
    return {"cpu_model": model, "cpu_flags": flags, "torch": torch.__version__}


def step_fingerprint(*parts) -> str:
    """A short hash of what shapes the probed step (model / loss config, batch shape, threads)."""
    text = json.dumps([p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts],
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/medmm``, ``~/.cache/medmm`` when XDG_CACHE_HOME is unset."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medmm"


def _cache_key(fingerprint: str) -> str:
    identity = {**cpu_identity(), "threads": torch.get_num_threads(), "step": fingerprint}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
        return entries if isinstance(entries, dict) else {}
    except (OSError, ValueError):  # missing or half-written: probe again
        return {}


def _write_cache(path: Path, entries: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)  # concurrent runs never read a half-written file


BUSY_LOAD_PER_CORE = 1.5  # above this, other jobs share the cores and would tip the probe's answer


def machine_busy() -> bool:
    """Whether other work shares the cores now: the 1-minute load average per core is above
    :data:`BUSY_LOAD_PER_CORE`. A probe taken then is used for the run but not cached."""
    return os.getloadavg()[0] / (os.cpu_count() or 1) > BUSY_LOAD_PER_CORE


def choose_precision(configured: str | None, make_step: Callable[[], StepFn], fingerprint: str,
                     **probe_options) -> PrecisionChoice:
    """The run's precision: ``configured`` when set; the GPU rule on a GPU; on a CPU the
    cached probe result for this machine and ``fingerprint``, else a fresh
    :func:`probe_precision` of ``make_step()`` (called only when a probe runs), cached unless
    other work shared the cores when it started (:func:`machine_busy`)."""
    if configured or torch.cuda.is_available():
        return rule_choice(configured)
    path, key = cache_dir() / CACHE_FILE, _cache_key(fingerprint)
    entries = _read_cache(path)
    if key in entries:
        cached = entries[key]
        return PrecisionChoice(cached["precision"], "cached-probe", cached["figures"])
    busy = machine_busy()
    result = probe_precision(make_step(), **probe_options)
    if busy:  # a later run on quiet cores probes again
        return PrecisionChoice(result.precision, "probe-busy-uncached", result.figures())
    choice = PrecisionChoice(result.precision, "probe", result.figures())
    entries[key] = {**asdict(choice), **cpu_identity()}
    _write_cache(path, entries)
    return choice
