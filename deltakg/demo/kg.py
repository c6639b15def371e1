"""The demo's KG stages: our model on UMLS, PyKEEN's ComplEx for the same wall-clock time, and kNN-KGE."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .config import KGStage, KNNStage

__all__ = ["DATASET", "METRICS", "train_kg", "train_pykeen", "knn_rows"]

DATASET = "umls"
METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")
# PyKEEN ComplEx as benchmarks/quality.py trains it on the small graphs (LCWA 1-N scoring with reciprocal
# relations, softmax cross-entropy, N3 regulariser, Adam)
COMPLEX = dict(dim=200, lr=1e-2, batch_size=128, reg_weight=1e-2)


def _metrics(payload: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(payload[key]), 5) for key in METRICS}


def train_kg(folder: Path, config: KGStage, *, progress: bool) -> dict[str, Any]:
    """Train the masked-entity model on UMLS into ``folder`` and evaluate it on test (filtered, both sides)."""
    from deltakg.kge.evaluation import evaluate_model
    from deltakg.kge.training import TrainConfig, train_model
    from kg_data import load_dataset

    kg = load_dataset(DATASET)
    # fp32 everywhere: the same numbers on every machine (auto precision could pick bf16 on some CPUs)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, weight_decay=config.weight_decay,
                        patience=None, seed=config.seed, precision="32-true", decoder_dtype="float32",
                        progress=progress)
    result = train_model(kg, folder, encoder="tiny", use_text=False, layers=config.layers, inverse_relations=True,
                         readout="entity", config=train)
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the best model is saved in folder itself
    test = evaluate_model(result.model, kg, "test", precision="fp32", progress=progress)
    m = result.metrics
    return {"model": "kg", "dataset": kg.name, "split": "test", "filtered": True, "test": _metrics(test),
            "train_s": round(m["train_seconds"], 1), "epochs": m["epochs_run"], "best_valid_mrr":
            round(m["best_valid_mrr"], 5), "parameters": m["parameters"],
            "layout": f"tiny encoder ({config.layers} layer), no texts, inverse relations, entity readout"}


def train_pykeen(budget_s: float, seed: int, *, progress: bool, dataset: str = DATASET) -> dict[str, Any]:
    """PyKEEN ComplEx trained on ``dataset`` for ``budget_s`` seconds (whole epochs), scored by PyKEEN's evaluator."""
    import contextlib
    import sys

    import torch
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.losses import CrossEntropyLoss
    from pykeen.models import ComplEx
    from pykeen.regularizers import PowerSumRegularizer
    from pykeen.training import LCWATrainingLoop, TrainingCallback
    from pykeen.triples import TriplesFactory
    from tqdm.auto import tqdm

    from kg_data import load_dataset, to_pykeen

    kg = load_dataset(dataset)
    base = to_pykeen(kg, "train")
    train = TriplesFactory(mapped_triples=base.mapped_triples, entity_to_id=base.entity_to_id,
                           relation_to_id=base.relation_to_id, create_inverse_triples=True)
    model = ComplEx(triples_factory=train, embedding_dim=COMPLEX["dim"], entity_initializer="xavier_uniform",
                    relation_initializer="xavier_uniform", regularizer=PowerSumRegularizer,
                    regularizer_kwargs={"weight": COMPLEX["reg_weight"], "p": 3.0, "normalize": False},
                    loss=CrossEntropyLoss(), random_seed=seed)
    optimizer = torch.optim.Adam(model.get_grad_params(), lr=COMPLEX["lr"])
    loop = LCWATrainingLoop(model=model, triples_factory=train, optimizer=optimizer,
                            automatic_memory_optimization=False)
    bar = tqdm(total=round(budget_s), desc="PyKEEN ComplEx", unit="s", disable=not progress, leave=False)
    started = time.perf_counter()
    state = {"epochs": 0}

    class Budget(TrainingCallback):
        """Stops PyKEEN's loop at the end of the epoch in which the budget runs out."""

        def post_epoch(self, epoch: int, epoch_loss: float, **kwargs: Any) -> None:
            state["epochs"] = epoch
            bar.n = min(bar.total, round(time.perf_counter() - started))
            bar.set_postfix_str(f"epoch {epoch}, loss {epoch_loss:.3f}")
            if time.perf_counter() - started >= budget_s:
                self.training_loop._should_stop = True  # the flag PyKEEN's own early stopper sets

    with contextlib.redirect_stdout(sys.stderr):
        loop.train(triples_factory=train, num_epochs=1_000_000, batch_size=COMPLEX["batch_size"], use_tqdm=False,
                   callbacks=[Budget()], label_smoothing=0.0)
    train_s = time.perf_counter() - started
    bar.close()
    model.eval()
    result = RankBasedEvaluator(filtered=True).evaluate(model, kg.test, batch_size=256, use_tqdm=False,
                                                        additional_filter_triples=[kg.train, kg.valid])
    names = {"mrr": "inverse_harmonic_mean_rank", "mr": "arithmetic_mean_rank", "hits@1": "hits_at_1",
             "hits@3": "hits_at_3", "hits@10": "hits_at_10"}
    test = {key: round(float(result.get_metric(f"both.realistic.{name}")), 5) for key, name in names.items()}
    parameters = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    return {"model": "PyKEEN ComplEx", "dataset": kg.name, "split": "test", "filtered": True, "test": test,
            "budget": f"the same wall-clock training time as ours ({budget_s:.1f} s; ours includes its per-epoch "
                      f"validation), whole epochs, the final state",
            "train_s": round(train_s, 1), "epochs": state["epochs"], "parameters": parameters,
            "settings": {**COMPLEX, "loss": "softmax cross-entropy (LCWA, reciprocal relations)", "regularizer": "N3"},
            "evaluator": "pykeen RankBasedEvaluator (filtered by train + valid + test, realistic ranks, both sides)"}


def knn_rows(model_dir: Path, config: KNNStage, *, progress: bool) -> dict[str, Any]:
    """kNN-KGE on UMLS test beside the model alone (k, T, lambda chosen on valid)."""
    from deltakg.kge.model import MaskedEntityModel
    from kg_data import load_dataset
    from knn.link_prediction import evaluate_model_knn

    kg = load_dataset(DATASET)
    model = MaskedEntityModel.from_pretrained(model_dir)
    payload = evaluate_model_knn(model, kg, "test", valid_subset=config.valid_subset, progress=progress)
    knn = payload["knn"]
    return {"model": _metrics(payload), "knn": _metrics(knn),
            "settings": {"k": knn["k"], "lambda": knn["lambda"], "temperature": round(float(knn["temperature"]), 6),
                         "metric": knn["metric"], "store_entries": knn["store_entries"], "set_by": knn["set_by"]},
            "valid_queries": knn.get("valid", {}).get("queries")}
