"""llm_editing: triples as factual edits of causal LMs.

- :mod:`~llm_editing.requests`: :class:`EditRequest` (prompt, target_new, ground_truth, subject, rephrasings,
  locality, portability, triple), relation templates, triple -> request, EasyEdit/ZsRE/CounterFact records;
- :mod:`~llm_editing.facts`: single-answer facts of FB15k-237 with natural templates, edits with
  wrong-but-plausible targets;
- :mod:`~llm_editing.toy`: a small GPT-2 trained from a config on those facts (``deltakg llm-train-toy``);
- :mod:`~llm_editing.stories`: the pretrained stories260K Llama as a Hugging Face ``LlamaForCausalLM``;
- :mod:`~llm_editing.metrics`: reliability, generalization, locality (against the pre-edit model),
  portability, exact match, probability success, fluency.
"""

from .facts import (
    DATASET_TEMPLATES,
    FB15K237_TEMPLATES,
    Fact,
    edit_requests,
    load_facts,
    read_facts_jsonl,
    select_facts,
    single_answer_facts,
    write_facts_jsonl,
)
from .metrics import (
    METRIC_KEYS,
    LocalityReference,
    MetricsConfig,
    encode_pair,
    evaluate_requests,
    exact_match,
    greedy_generate,
    locality_reference,
    n_gram_entropy,
    target_log_probs,
    teacher_forced,
    token_accuracy,
)
from .requests import (
    EditRequest,
    RelationTemplate,
    TemplateRegistry,
    load_requests,
    load_requests_jsonl,
    request_from_dict,
    requests_from_triples,
    save_requests_jsonl,
)
from .stories import load_stories, load_stories_model, load_stories_tokenizer
from .toy import ToyConfig, ToyModel, load_toy_model, save_toy_model, train_toy_model

__all__ = [
    "DATASET_TEMPLATES", "FB15K237_TEMPLATES", "Fact", "edit_requests", "load_facts", "read_facts_jsonl",
    "select_facts", "single_answer_facts", "write_facts_jsonl",
    "METRIC_KEYS", "LocalityReference", "MetricsConfig", "encode_pair", "evaluate_requests", "exact_match",
    "greedy_generate", "locality_reference", "n_gram_entropy", "target_log_probs", "teacher_forced",
    "token_accuracy",
    "EditRequest", "RelationTemplate", "TemplateRegistry", "load_requests", "load_requests_jsonl",
    "request_from_dict", "requests_from_triples", "save_requests_jsonl",
    "load_stories", "load_stories_model", "load_stories_tokenizer",
    "ToyConfig", "ToyModel", "load_toy_model", "save_toy_model", "train_toy_model",
]
