"""deltakg: knowledge editing over triples.

LM-based KG embeddings and the editors that change them; the triple layer lives in :mod:`kg_data`.
"""

__version__ = "0.1.0"
