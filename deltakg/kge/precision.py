"""``auto`` precision: bf16 or fp32 chosen by timing both on the current device, once per machine and shape.

bf16 is 3-4x faster than fp32 on CPUs with AMX and slower on CPUs without it (measured: 75 vs 118 GFLOP/s for a
2048x2048 product on an AVX512-BF16 Xeon without AMX), so no fixed default suits every machine. The probe times
the products a run actually does (the encoder's FFN shape for training, the entity decoder's shape for the loss
and for evaluation) in both dtypes and picks bf16 only where it is clearly faster. Results are cached in a JSON
file keyed by device, CPU model and flags, torch version, thread count and shape.

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

__all__ = ["BF16_MARGIN", "MatmulProbe", "PrecisionChoice", "cpu_info", "probe_matmul", "cached_probe",
           "choose_precision", "cache_path", "device_of"]

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


def _seconds_per_product(m: int, k: int, n: int, dtype: torch.dtype, device: str, budget_s: float) -> float:
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up: kernel selection, page faults
        a @ b
    sync()
    best, spent = float("inf"), 0.0
    while spent < budget_s or best == float("inf"):
        start = time.perf_counter()
        a @ b
        sync()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return best


def probe_matmul(shape: tuple[int, int, int], device: str = "cpu", *, budget_s: float = 0.15,
                 timer: Callable[..., float] = _seconds_per_product) -> MatmulProbe:
    """Time ``shape`` = (m, k, n) in fp32 and bf16 (best of repeated runs) on ``device``."""
    m, k, n = shape
    flops = 2.0 * m * k * n
    fp32 = timer(m, k, n, torch.float32, device, budget_s)
    bf16 = timer(m, k, n, torch.bfloat16, device, budget_s)
    return MatmulProbe(device, (m, k, n), flops / fp32 / 1e9, flops / bf16 / 1e9)


def cache_path() -> Path:
    """The probe cache file (``$DELTAKG_CACHE``, else ``$XDG_CACHE_HOME/deltakg``, else ``~/.cache/deltakg``)."""
    root = os.environ.get(ENV_CACHE) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deltakg"
    return Path(root) / "precision_probe.json"


def _machine_key(device: str, shape: tuple[int, int, int]) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else json.dumps(cpu_info(), sort_keys=True)
    raw = f"{device}|{name}|torch {torch.__version__}|threads {torch.get_num_threads()}|{shape}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def cached_probe(shape: tuple[int, int, int], device: str = "cpu", *,
                 timer: Callable[..., float] = _seconds_per_product) -> MatmulProbe:
    """:func:`probe_matmul`, measured once per machine, device, thread count and shape, then read from the cache."""
    path, key = cache_path(), _machine_key(device, shape)
    try:
        cache = json.loads(path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}  # absent or damaged: probe again and rewrite it
    hit = cache.get(key)
    if isinstance(hit, dict):
        try:
            return MatmulProbe(hit["device"], tuple(hit["shape"]), float(hit["fp32_gflops"]),
                               float(hit["bf16_gflops"]))
        except (KeyError, TypeError, ValueError):
            pass
    probe = probe_matmul(shape, device, timer=timer)
    cache[key] = asdict(probe)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home still gets a correct (uncached) choice
    return probe


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``auto`` resolved to, and why."""

    use_bf16: bool
    reason: str
    probe: MatmulProbe | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: the choice, the reason and the measured rates."""
        out: dict[str, object] = {"dtype": "bf16" if self.use_bf16 else "fp32", "reason": self.reason}
        if self.probe is not None:
            out.update(asdict(self.probe), bf16_speedup=round(self.probe.bf16_speedup, 3))
        return out


def choose_precision(shape: tuple[int, int, int], device: str = "cpu", *,
                     timer: Callable[..., float] = _seconds_per_product) -> PrecisionChoice:
    """bf16 or fp32 for products of ``shape`` on ``device``: forced by ``$DELTAKG_PRECISION``, else probed."""
    forced = os.environ.get(ENV_FORCE, "").strip().lower()
    if forced:
        if forced not in ("fp32", "bf16"):
            from kg_data.errors import KGDataError

            raise KGDataError(f"must be fp32 or bf16, got {forced!r}", field=ENV_FORCE)
        return PrecisionChoice(forced == "bf16", f"${ENV_FORCE}={forced}")
    probe = cached_probe(shape, device, timer=timer)
    verdict = "faster" if probe.use_bf16 else f"not {BF16_MARGIN}x faster"
    return PrecisionChoice(probe.use_bf16, f"bf16 {probe.bf16_gflops:.0f} vs fp32 {probe.fp32_gflops:.0f} GFLOP/s "
                                           f"on {device} for {shape[0]}x{shape[1]}x{shape[2]}: bf16 {verdict}", probe)
