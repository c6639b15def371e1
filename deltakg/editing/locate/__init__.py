"""Locate-and-edit methods written once for every model family: FT-L, ROME, MEMIT, GRACE, and the trained MEND and KE.

The math asks a :class:`~deltakg.editing.locate.adapter.LocateAdapter` for everything model-specific
(``llm_editing.adapter.CausalLMTarget`` for causal LMs, :class:`KGELocateAdapter` for the KG model). Importing this package registers the editors.
"""

from .adapter import KEY_POSITIONS, LocateAdapter, ModuleLayout, Probe, as_locate_adapter, register_adapter_factory
from .ft_l import FTL, FTLConfig
from .grace import GRACE, GRACEConfig
from .kge_adapter import KGELocateAdapter
from .memit import MEMIT, MEMITConfig
from .ke import KE, KEConfig
from .mend import MEND, MENDConfig, train_mend
from .network import NetworkEditor, train_network_editor
from .rome import ROME, ROMEConfig
from .stats import SecondMoment, second_moment

__all__ = ["KEY_POSITIONS", "LocateAdapter", "ModuleLayout", "Probe", "as_locate_adapter", "register_adapter_factory",
           "FTL", "FTLConfig", "KGELocateAdapter", "GRACE", "GRACEConfig", "MEMIT", "MEMITConfig", "MEND", "MENDConfig", "train_mend", "KE", "KEConfig", "NetworkEditor", "train_network_editor", "ROME", "ROMEConfig",
           "SecondMoment", "second_moment"]
