"""Locate-and-edit methods written once for every model family: FT-L, ROME, MEMIT, GRACE.

The math asks a :class:`~deltakg.editing.locate.adapter.LocateAdapter` for everything model-specific
(``llm_editing.adapter.CausalLMTarget`` for causal LMs, :class:`KGELocateAdapter` for the KG model). Importing this package registers the editors.
"""

from .adapter import KEY_POSITIONS, LocateAdapter, ModuleLayout, Probe, as_locate_adapter, register_adapter_factory
from .ft_l import FTL, FTLConfig
from .grace import GRACE, GRACEConfig
from .kge_adapter import KGELocateAdapter
from .memit import MEMIT, MEMITConfig
from .rome import ROME, ROMEConfig
from .stats import SecondMoment, second_moment

__all__ = ["KEY_POSITIONS", "LocateAdapter", "ModuleLayout", "Probe", "as_locate_adapter", "register_adapter_factory",
           "FTL", "FTLConfig", "KGELocateAdapter", "GRACE", "GRACEConfig", "MEMIT", "MEMITConfig", "ROME", "ROMEConfig",
           "SecondMoment", "second_moment"]
