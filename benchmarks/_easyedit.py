"""EasyEdit (the LLM-editing peer) behind deltakg's Editor interface, imported from its folder at run time.

The peer's code is never copied: :func:`load_easyedit` puts its folder on ``sys.path`` and, as its
PROVENANCE.md describes, answers the imports that ROME/MEMIT/FT never use (multimodal and API packages,
``rouge``, ``accelerate``) with stub modules. :class:`PeerEditor` wraps ``apply_rome_to_model``,
``apply_memit_to_model`` and ``apply_ft_to_model`` as an :class:`deltakg.editing.Editor`, so that
``llm_editing.editors.run_llm_edits`` applies, times, measures and rolls back the peer's edits exactly as it
does ours. Its covariance statistics come from EasyEdit's own ``layer_stats`` over the same local corpus
ours use (its dataset loader is pointed at that corpus instead of a hub dataset), computed in ``prepare``
so that neither side's time per edit includes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import importlib.machinery
import io
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence
from unittest import mock

from deltakg.editing import Editor

__all__ = ["load_easyedit", "PeerEditor", "PEER_METHODS", "peer_hparams"]

# imported at module level somewhere under easyeditor, never used by ROME / MEMIT / FT
_STUBBED = ("timm", "openai", "cv2", "iopath", "gpustat", "PIL", "peft", "zhipuai", "qwen_vl_utils", "av",
            "fairscale", "sentence_transformers", "higher", "nltk", "einops", "hydra", "omegaconf", "rouge",
            "accelerate", "transformers.modeling_attn_mask_utils", "easyeditor.trainer.blip2_models",
            "easyeditor.dataset.processor.blip", "easyeditor.dataset.coco_caption", "easyeditor.dataset.vqa")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers imports of :data:`_STUBBED` packages (and their submodules) with MagicMock modules."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        for stub in _STUBBED:
            if name == stub or (name.startswith(stub) and name[len(stub)] in "._"):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        module = mock.MagicMock()
        module.__name__, module.__path__, module.__spec__ = spec.name, [], spec
        return module

    def exec_module(self, module: Any) -> None:
        """Nothing to run: the MagicMock answers every attribute."""


def load_easyedit(peer_dir: Path) -> tuple[dict[str, Any] | None, str | None]:
    """EasyEdit's ROME/MEMIT/FT entry points from ``peer_dir``, or (None, why not)."""
    if not (peer_dir / "easyeditor" / "__init__.py").is_file():
        return None, f"EasyEdit not found at {peer_dir.name} (expected its easyeditor/ package there)"
    if not any(isinstance(f, _StubFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _StubFinder())
    if str(peer_dir) not in sys.path:
        sys.path.insert(0, str(peer_dir))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from easyeditor.models.ft import FTHyperParams, apply_ft_to_model
            from easyeditor.models.memit import MEMITHyperParams, apply_memit_to_model
            from easyeditor.models.memit import memit_main
            from easyeditor.models.rome import ROMEHyperParams, apply_rome_to_model
            from easyeditor.models.rome import layer_stats as rome_layer_stats
            from easyeditor.models.rome import compute_u
    except Exception as err:  # the peer's own import failing is a reason to skip, whatever it is
        return None, f"importing EasyEdit failed: {type(err).__name__}: {err}"
    logging.getLogger("easyeditor").setLevel(logging.WARNING)
    return {"rome": (ROMEHyperParams, apply_rome_to_model), "memit": (MEMITHyperParams, apply_memit_to_model),
            "ft": (FTHyperParams, apply_ft_to_model), "layer_stats": rome_layer_stats, "memit_main": memit_main,
            "compute_u": compute_u}, None


def _gpt2_modules() -> dict[str, str]:
    return {"rewrite_module_tmp": "transformer.h.{}.mlp.c_proj", "layer_module_tmp": "transformer.h.{}",
            "mlp_module_tmp": "transformer.h.{}.mlp", "attn_module_tmp": "transformer.h.{}.attn",
            "ln_f_module": "transformer.ln_f", "lm_head_module": "transformer.wte"}


def peer_hparams(method: str, model_dir: Path, n_layer: int, n_texts: int, stats_dir: str,
                 overrides: Mapping[str, Any]) -> dict[str, Any]:
    """EasyEdit's gpt2-xl hyperparameters of ``method`` (its hparams/*.yaml values) sized for this model."""
    common = {"model_name": str(model_dir), "device": "cpu", "model_parallel": False, **_gpt2_modules()}
    # "wikitext" only names the cache entry: PeerEditor.prepare serves our corpus under that name
    stats = {"stats_dir": stats_dir, "mom2_dataset": "wikitext", "mom2_n_samples": n_texts, "mom2_dtype": "float32"}
    value = {"fact_token": "subject_last", "v_num_grad_steps": 20, "v_lr": 0.5, "v_loss_layer": n_layer - 1,
             "v_weight_decay": 0.5, "kl_factor": 0.0625}
    table = {
        "rome": {"alg_name": "ROME", "layers": [1], "clamp_norm_factor": 4, "mom2_adjustment": False,
                 "context_template_length_params": [[5, 10], [10, 10]], **value, **stats},
        "memit": {"alg_name": "MEMIT", "layers": [0, 1], "clamp_norm_factor": 0.75, "layer_selection": "all",
                  "mom2_adjustment": True, "mom2_update_weight": 20000, **value, **stats},
        "ft": {"alg_name": "FT", "layers": [0], "num_steps": 25, "batch_size": 3, "max_length": 40, "lr": 5e-4,
               "weight_decay": 0, "kl_factor": 0, "norm_constraint": 5e-4, "objective_optimization": "prompt_last"},
    }
    params = {**common, **table[method]}
    unknown = [k for k in overrides if k not in params]
    if unknown:
        raise SystemExit(f"--peer-set {method}.{unknown[0]}: EasyEdit's {method} has no such hyperparameter")
    params.update(overrides)
    return params


PEER_METHODS = ("rome", "memit", "ft")


class PeerEditor(Editor):
    """One EasyEdit method as a deltakg Editor (not registered: the benchmark builds it)."""

    families: ClassVar[tuple[str, ...]] = ("causal_lm",)

    def __init__(self, peer: Mapping[str, Any], method: str, hparams: Mapping[str, Any],
                 corpus: Sequence[str]) -> None:
        hparams_cls, self._apply = peer[method]
        known = {f.name for f in dataclasses.fields(hparams_cls)}
        self.hparams = hparams_cls(**{k: v for k, v in hparams.items() if k in known})
        self.name = f"easyedit-{method}"  # type: ignore[misc]
        self.method = method
        self.peer = peer
        self.corpus = list(corpus)

    def touched(self, target: Any) -> list[str]:
        """The rewritten FFN output projections (FT also tunes their biases: it matches parameter names)."""
        modules = [self.hparams.rewrite_module_tmp.format(layer) for layer in self.hparams.layers]
        if self.method == "ft":
            return [n for n, _ in target.model.named_parameters() if any(m in n for m in modules)]
        return [m + ".weight" for m in modules]

    def prepare(self, target: Any) -> None:
        """EasyEdit's covariance statistics over our corpus (its layer_stats, its caches), before any edit."""
        if not getattr(self.hparams, "mom2_adjustment", False):
            return
        layer_stats = self.peer["layer_stats"]
        texts = [{"text": t} for t in self.corpus]
        layer_stats.load_dataset = lambda *args, **kwargs: {"train": texts}  # the local corpus, not a hub dataset
        with contextlib.redirect_stdout(io.StringIO()):
            for layer in self.hparams.layers:
                name = self.hparams.rewrite_module_tmp.format(layer)
                if self.method == "memit":
                    self.peer["memit_main"].get_cov(target.model, target.tokenizer, name, self.hparams.mom2_dataset,
                                                    self.hparams.mom2_n_samples, self.hparams.mom2_dtype,
                                                    hparams=self.hparams)
                else:
                    self.peer["compute_u"].get_inv_cov(target.model, target.tokenizer, name,
                                                       self.hparams.mom2_dataset, self.hparams.mom2_n_samples,
                                                       self.hparams.mom2_dtype, hparams=self.hparams)

    def edit(self, target: Any, cases: Sequence[Any]) -> None:
        """The peer's ``apply_*_to_model`` on the requests as EasyEdit dicts (its printing silenced)."""
        requests = [{"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new,
                     "ground_truth": r.ground_truth, "case_id": i} for i, r in enumerate(cases)]
        if self.method == "rome":  # EasyEdit's ROME takes one request per call
            batches = [[r] for r in requests]
        else:
            batches = [requests]
        flags = {n: p.requires_grad for n, p in target.model.named_parameters()}
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                for batch in batches:
                    self._apply(target.model, target.tokenizer, batch, self.hparams, copy=False,
                                return_orig_weights=False)
        finally:  # EasyEdit's FT leaves requires_grad off on every other parameter
            for n, p in target.model.named_parameters():
                p.requires_grad_(flags[n])


def reset_peer_caches(peer: Mapping[str, Any]) -> None:
    """Forget EasyEdit's module-level caches (context templates, covariances) between models or settings."""
    from easyeditor.models.memit import memit_main
    from easyeditor.models.rome import rome_main

    memit_main.CONTEXT_TEMPLATES_CACHE = None
    memit_main.COV_CACHE.clear()
    rome_main.CONTEXT_TEMPLATES_CACHE = None
    peer["compute_u"].inv_mom2_cache.clear()


def scratch_stats_dir() -> str:
    """A temporary folder for EasyEdit's statistics cache (removed at exit)."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix="easyedit-stats-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
