"""glibc allocator tuning for training (process-wide; Linux only)."""

from __future__ import annotations

__all__ = ["bound_allocator_caching"]


def bound_allocator_caching(threshold: int = 1 << 20) -> bool:
    """Make glibc serve blocks >= ``threshold`` bytes with mmap and return them on free (Linux; else no-op).

    glibc raises its mmap threshold each time a large block is freed, after which batches of varying
    query length are carved from the heap and the freed pieces stay resident: peak RSS then creeps up over
    an epoch. A fixed threshold keeps RSS at the live peak of the largest batch, at the cost of page faults
    on each new large tensor: a few percent of a FB15k-237 step, but a WN18RR step with texts (many 12 MB
    activations, a 63 MB entity-table gradient) took 757 ms against 531 ms without it
    (``benchmarks/train_step.py --bound-memory``). The setting is process-wide and stays. Returns whether it
    took effect.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))
    except (OSError, AttributeError):
        return False
