"""What the fresh-model benchmarks (memorise, train_step) share: their model arguments and the dataset load."""

from __future__ import annotations

import argparse
import json

import torch


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Dataset, encoder and batch arguments of a benchmark that trains a fresh model."""
    p.add_argument("--dataset", default="wn18rr")
    p.add_argument("--data-dir", default=None, help="folder holding WN18RR/ etc. (default $DELTAKG_DATA)")
    p.add_argument("--encoder", default="tiny")
    p.add_argument("--text", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--batch-size", type=int, default=128, help="triples per step (each gives 2 queries)")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)


def load_or_skip(benchmark: str, args: argparse.Namespace):
    """The dataset, after setting threads; None (and a "skipped" JSON line) when its data are missing."""
    from kg_data import KGDataError, load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return load_dataset(args.dataset, args.data_dir)
    except KGDataError as err:
        print(json.dumps({"benchmark": benchmark, "dataset": args.dataset, "skipped": str(err)}))
        return None
