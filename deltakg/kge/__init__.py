"""LM-based KG embeddings: the masked-entity model, its Lightning shell, and rank-based evaluation.

Submodules are imported on use (they pull in torch/transformers/Lightning); this package stays light so
that the command line starts fast.
"""

ENCODER_CHOICES = ("minilm", "tiny")
DECODER_DTYPES = ("float32", "bfloat16")  # of the training loss's decoder products
