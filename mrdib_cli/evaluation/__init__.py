"""Full-ranking evaluation: FAISS top-K with exact masking, MMRec metric definitions, protocols.

Public API (used by the trainer every epoch and by ``mrdib eval``)::

    from mrdib_cli.evaluation.engine import evaluate, evaluate_split, EvalResult, Protocol
"""
