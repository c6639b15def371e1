"""``auto`` precision: bf16 or fp32 chosen by timing both on the current device, once per machine and shape.

bf16 products are 3-13x faster than fp32 on CPUs with AMX and slower on CPUs without it (measured: 75 vs 118
GFLOP/s for a 2048x2048 product on an AVX512-BF16 Xeon without AMX), so no fixed default suits every machine; and
on a small model the casts of autocast outweigh even a faster product. The probe therefore times the work a run
actually does (a training step of the model, in both precisions, and one with the decoder products in bf16; an
evaluation batch) and picks bf16 only where it is clearly faster. Results are cached in a JSON file keyed by
device, CPU model and flags, torch version, thread count and workload (the model's shapes and batch size), so a
machine probes each kind of run once.

``DELTAKG_PRECISION=fp32|bf16`` makes ``auto`` resolve to that choice without probing (the test suite pins fp32
so that its seeded runs do not depend on the machine); explicit settings always win over ``auto``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

__all__ = ["BF16_MARGIN", "MatmulProbe", "WorkloadProbe", "PrecisionChoice", "cpu_info", "probe_matmul",
           "cached_probe", "cached_workload_probe", "best_seconds", "choose_precision", "choose_for_workload",
           "cache_path", "device_of"]

ENV_FORCE = "DELTAKG_PRECISION"
ENV_CACHE = "DELTAKG_CACHE"  # shared with the locate-and-edit statistics cache
# bf16 must beat fp32 by this factor to be chosen: it loses mantissa bits, and autocast adds casts the
# bare product does not show
BF16_MARGIN = 1.15
_CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def cpu_info() -> dict[str, object]:
    """The CPU model and the flags that decide bf16 speed (AMX, AVX512-BF16), from ``/proc/cpuinfo`` on Linux."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key in ("flags", "Features"):
            flags = set(value.split())
        if model and flags and key == "":  # the first processor's block is enough
            break
    return {"model": model, "flags": [f for f in _CPU_FLAGS if f in flags], "cores": os.cpu_count()}


def device_of(accelerator: str) -> str:
    """The torch device type a Lightning ``accelerator`` setting trains on."""
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu" if accelerator == "cpu" else accelerator


@dataclass(frozen=True)
class MatmulProbe:
    """Measured GFLOP/s of one (m x k) @ (k x n) product in fp32 and in bf16 on one device."""

    device: str
    shape: tuple[int, int, int]
    fp32_gflops: float
    bf16_gflops: float

    @property
    def bf16_speedup(self) -> float:
        """bf16 rate over fp32 rate."""
        return self.bf16_gflops / self.fp32_gflops if self.fp32_gflops > 0 else 0.0

    @property
    def use_bf16(self) -> bool:
        """Whether bf16 is clearly faster here."""
        return self.bf16_speedup >= BF16_MARGIN


@dataclass(frozen=True)
class WorkloadProbe:
    """Measured seconds of one workload (e.g. a training step of a given model) in fp32 and in bf16."""

    device: str
    workload: str
    fp32_s: float
    bf16_s: float

    @property
    def bf16_speedup(self) -> float:
        """fp32 time over bf16 time."""
        return self.fp32_s / self.bf16_s if self.bf16_s > 0 else 0.0

    @property
    def use_bf16(self) -> bool:
        """Whether bf16 is clearly faster here."""
        return self.bf16_speedup >= BF16_MARGIN


def best_seconds(run: Callable[[], object], *, budget_s: float = 0.3, warmup: int = 1, min_reps: int = 2,
                 max_reps: int = 20, sync: Callable[[], object] = lambda: None) -> float:
    """The fastest of repeated calls of ``run`` (after ``warmup`` untimed ones), within about ``budget_s``."""
    for _ in range(warmup):
        run()
    sync()
    best, spent, reps = float("inf"), 0.0, 0
    while reps < min_reps or (spent < budget_s and reps < max_reps):
        start = time.perf_counter()
        run()
        sync()
        took = time.perf_counter() - start
        best, spent, reps = min(best, took), spent + took, reps + 1
    return best


def _seconds_per_product(m: int, k: int, n: int, dtype: torch.dtype, device: str, budget_s: float) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return best_seconds(lambda: a @ b, budget_s=budget_s, warmup=2, sync=sync)


def probe_matmul(shape: tuple[int, int, int], device: str = "cpu", *, budget_s: float = 0.15,
                 timer: Callable[..., float] = _seconds_per_product) -> MatmulProbe:
    """Time ``shape`` = (m, k, n) in fp32 and bf16 (best of repeated runs) on ``device``."""
    m, k, n = shape
    flops = 2.0 * m * k * n
    with torch.random.fork_rng(devices=[]):  # probing must not shift a seeded run's random stream
        fp32 = timer(m, k, n, torch.float32, device, budget_s)
        bf16 = timer(m, k, n, torch.bfloat16, device, budget_s)
    return MatmulProbe(device, (m, k, n), flops / fp32 / 1e9, flops / bf16 / 1e9)


def cache_path() -> Path:
    """The probe cache file (``$DELTAKG_CACHE``, else ``$XDG_CACHE_HOME/deltakg``, else ``~/.cache/deltakg``)."""
    root = os.environ.get(ENV_CACHE) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deltakg"
    return Path(root) / "precision_probe.json"


def _machine_key(device: str, workload: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else json.dumps(cpu_info(), sort_keys=True)
    raw = f"{device}|{name}|torch {torch.__version__}|threads {torch.get_num_threads()}|{workload}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _cached(key: str, load: Callable[[dict], object], measure: Callable[[], object]) -> object:
    path = cache_path()
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}  # absent or damaged: probe again and rewrite it
    hit = cache.get(key)
    if isinstance(hit, dict):
        try:
            return load(hit)
        except (KeyError, TypeError, ValueError):
            pass
    probe = measure()
    cache[key] = asdict(probe)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets a correct (uncached) choice
    return probe


def cached_probe(shape: tuple[int, int, int], device: str = "cpu", *,
                 timer: Callable[..., float] = _seconds_per_product) -> MatmulProbe:
    """:func:`probe_matmul`, measured once per machine, device, thread count and shape, then read from the cache."""
    return _cached(_machine_key(device, f"matmul {shape}"),
                   lambda hit: MatmulProbe(hit["device"], tuple(hit["shape"]), float(hit["fp32_gflops"]),
                                           float(hit["bf16_gflops"])),
                   lambda: probe_matmul(shape, device, timer=timer))


def cached_workload_probe(workload: str, device: str, seconds: Callable[[bool], float]) -> WorkloadProbe:
    """``seconds(use_bf16)`` for both settings, measured once per machine, device, threads and ``workload``."""
    def measure() -> WorkloadProbe:
        with torch.random.fork_rng(devices=[]):
            return WorkloadProbe(device, workload, seconds(False), seconds(True))

    return _cached(_machine_key(device, f"workload {workload}"),
                   lambda hit: WorkloadProbe(hit["device"], str(hit["workload"]), float(hit["fp32_s"]),
                                             float(hit["bf16_s"])),
                   measure)


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` resolved to, and why."""

    use_bf16: bool
    reason: str
    probe: MatmulProbe | WorkloadProbe | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the choice, the reason and the measured rates."""
        out: dict[str, object] = {"dtype": "bf16" if self.use_bf16 else "fp32", "reason": self.reason}
        if self.probe is not None:
            out.update(asdict(self.probe), bf16_speedup=round(self.probe.bf16_speedup, 3))
        return out


def _forced() -> PrecisionChoice | None:
    forced = os.environ.get(ENV_FORCE, "").strip().lower()
    if not forced:
        return None
    if forced not in ("fp32", "bf16"):
        from kg_data.errors import KGDataError

        raise KGDataError(f"must be fp32 or bf16, got {forced!r}", field=ENV_FORCE)
    return PrecisionChoice(forced == "bf16", f"${ENV_FORCE}={forced}")


def choose_precision(shape: tuple[int, int, int], device: str = "cpu", *,
                     timer: Callable[..., float] = _seconds_per_product) -> PrecisionChoice:
    """bf16 or fp32 for products of ``shape`` on ``device``: forced by ``$DELTAKG_PRECISION``, else probed."""
    forced = _forced()
    if forced is not None:
        return forced
    probe = cached_probe(shape, device, timer=timer)
    verdict = "faster" if probe.use_bf16 else f"not {BF16_MARGIN}x faster"
    return PrecisionChoice(probe.use_bf16, f"bf16 {probe.bf16_gflops:.0f} vs fp32 {probe.fp32_gflops:.0f} GFLOP/s "
                                           f"on {device} for {shape[0]}x{shape[1]}x{shape[2]}: bf16 {verdict}", probe)


def choose_for_workload(workload: str, device: str, seconds: Callable[[bool], float]) -> PrecisionChoice:
    """bf16 or fp32 for a workload timed by ``seconds(use_bf16)``: forced by ``$DELTAKG_PRECISION``, else probed.

    Timing the real workload, not a bare product: on a small model autocast's casts outweigh a 3x faster
    product (UMLS, tiny encoder: a bf16-autocast step took 25.5 ms against 22.6 ms in fp32 on an AMX CPU).
    """
    forced = _forced()
    if forced is not None:
        return forced
    probe = cached_workload_probe(workload, device, seconds)
    verdict = "faster" if probe.use_bf16 else f"not {BF16_MARGIN}x faster"
    return PrecisionChoice(probe.use_bf16, f"{workload}: bf16 {probe.bf16_s * 1e3:.1f} ms vs fp32 "
                                           f"{probe.fp32_s * 1e3:.1f} ms on {device}: bf16 {verdict}", probe)
