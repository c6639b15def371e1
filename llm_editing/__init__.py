"""llm_editing: triples as factual edits of causal LMs (FT-L, ROME, MEMIT, GRACE, MEND/KE).

Not implemented yet: this package only reserves the import name (see the project issues).
"""
