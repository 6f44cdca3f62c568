"""Compatibility alias: the problem-set loaders moved to :mod:`optscale.problems` (they are an input edge,
not part of the online engine)."""

from optscale.problems import (  # noqa: F401
    ANSWER_FIELDS,
    DEMO,
    ID_FIELDS,
    LIST_KEYS,
    QUESTION_FIELDS,
    Question,
    demo_path,
    load_demo,
    load_problems,
    normalize_gold,
    read_records,
)
