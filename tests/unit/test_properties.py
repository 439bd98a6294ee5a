"""Property-based: the validator never crashes and always answers with field paths."""

from __future__ import annotations

import copy
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmtrain.operator import api
from tests.unit.test_api import MINIMAL

QUOTED = r'\["(?:\\.|[^"\\])*"\]'
PATH = re.compile(
    rf"^(\(document\)|[A-Za-z_][\w-]*|{QUOTED})(\.[A-Za-z_][\w-]*|\[\d+\]|{QUOTED})*$"
)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)


def check(doc) -> None:
    problems = api.validate_job(doc)
    for p in problems:
        assert PATH.match(p.path), p
        assert p.message
    if not problems:
        api.parse_job(doc)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_random_documents(doc) -> None:
    check(doc)


def _set(doc, path, value):
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


TARGETS = [
    ("spec",),
    ("spec", "model"),
    ("spec", "stages"),
    ("spec", "stages", 0),
    ("spec", "stages", 0, "type"),
    ("spec", "stages", 0, "dataset"),
    ("spec", "stages", 0, "name"),
    ("spec", "resources"),
    ("metadata", "name"),
    ("spec", "runPolicy"),
    ("apiVersion",),
]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TARGETS), values)
def test_mutated_valid_documents(target, value) -> None:
    doc = copy.deepcopy(MINIMAL)
    _set(doc, target, value)
    problems = api.validate_job(doc)
    check(doc)
    if problems:
        prefix = ".".join(str(t) for t in target if isinstance(t, str))
        assert any(p.path.replace("[0]", "").startswith(prefix.split(".")[0]) for p in problems)
