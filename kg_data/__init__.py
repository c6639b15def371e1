"""kg_data: the triple layer of deltakg.

Triples, id vocabularies, the id-mapped KG store, readers/writers of the standard KG text formats, the
dataset catalog, edit records, and interop with PyKEEN, Hugging Face ``datasets`` and networkx.
"""

from .catalog import DATA_ENV, dataset_names, load_dataset, resolve_data_dir
from .edits import EditCase, EditSet, StableFact, read_edit_cases, read_stable_facts, write_edit_cases, write_stable_facts
from .errors import KGDataError
from .formats import read_labels, read_text_map, read_triples, write_labels, write_text_map, write_triples
from .graph import k_hop_neighbourhood, relation_categories, to_networkx
from .interop import from_pykeen, to_hf_dataset, to_pykeen
from .store import SPLITS, KnowledgeGraph
from .triple import Triple
from .vocab import Vocabulary

__all__ = [
    "DATA_ENV",
    "SPLITS",
    "EditCase",
    "EditSet",
    "KGDataError",
    "KnowledgeGraph",
    "StableFact",
    "Triple",
    "Vocabulary",
    "dataset_names",
    "from_pykeen",
    "k_hop_neighbourhood",
    "load_dataset",
    "read_edit_cases",
    "read_labels",
    "read_stable_facts",
    "read_text_map",
    "read_triples",
    "relation_categories",
    "resolve_data_dir",
    "to_hf_dataset",
    "to_networkx",
    "to_pykeen",
    "write_edit_cases",
    "write_labels",
    "write_stable_facts",
    "write_text_map",
    "write_triples",
]
