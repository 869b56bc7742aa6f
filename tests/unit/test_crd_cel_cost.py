"""A CEL cost guard: the apiserver's cost estimator must accept the CRDs at install.

kube-apiserver estimates each x-kubernetes-validations rule's worst-case cost from the
schema when the CRD is created, and refuses the CRD when a rule is too expensive (per rule
and per CRD). The worst case of anything a rule walks is set by the schema's bounds: an
unbounded list or map, or a string without maxLength, is costed at the largest request
(3 MB) and one such rule under a list can blow the budget. So, for every rule:

- every list and map at or below the rule's node is bounded (maxItems / maxProperties),
  and so is every list or map that holds the rule (it runs once per element);
- every string the rule reads (compares, measures, iterates) is bounded (maxLength or enum);
  `has(self.x)` only tests presence and costs the same whatever x holds;
- a rough worst case (elements the rule may visit times the number of times it runs)
  stays far below the apiserver's per-CRD limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lark import Tree

from support import crdcheck

pytestmark = pytest.mark.unit

KINDS = ["FineTuneJob", "HyperparameterSweep"]
PER_CRD_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit in apiextensions-apiserver
Path = tuple[str, ...]


def rule_nodes(
    schema: dict[str, Any], path: Path = (), cardinality: int = 1
) -> Iterator[tuple[Path, dict[str, Any], int]]:
    """(path, node, how many times a rule there may run) for every node with CEL rules."""
    if schema.get("x-kubernetes-validations"):
        yield path, schema, cardinality
    for key, sub in schema.get("properties", {}).items():
        yield from rule_nodes(sub, (*path, key), cardinality)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from rule_nodes(extra, (*path, "*"), cardinality * bound(schema))
    if isinstance(schema.get("items"), dict):
        yield from rule_nodes(schema["items"], (*path, "[]"), cardinality * bound(schema))


def bound(schema: dict[str, Any]) -> int:
    """The most elements a list or map may hold (huge when unbounded)."""
    key = "maxItems" if schema.get("type") == "array" else "maxProperties"
    return int(schema.get(key, 3 * 1024 * 1024))


def collections_below(schema: dict[str, Any], path: Path = ()) -> Iterator[tuple[Path, dict]]:
    if schema.get("type") == "array" or isinstance(schema.get("additionalProperties"), dict):
        yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from collections_below(sub, (*path, key))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from collections_below(schema["additionalProperties"], (*path, "*"))
    if isinstance(schema.get("items"), dict):
        yield from collections_below(schema["items"], (*path, "[]"))


def _chain(tree: Tree) -> Path | None:
    """`self.a.b` as ("a", "b"); None when the member chain does not start at self."""
    names: list[str] = []
    node: Any = tree
    while isinstance(node, Tree):
        if node.data == "member_dot":
            names.append(str(node.children[1]))
            node = node.children[0]
        elif node.data in ("member", "primary") and len(node.children) == 1:
            node = node.children[0]
        elif node.data == "ident":
            return tuple(reversed(names)) if str(node.children[0]) == "self" else None
        else:
            return None
    return None


def read_paths(rule: str) -> set[Path]:
    """Paths below `self` the rule reads as values (presence tests with has() excluded)."""
    tree = crdcheck._ENV.compile(rule)
    inside_has: set[int] = set()
    for node in tree.iter_subtrees():
        if node.data == "ident_arg" and str(node.children[0]) == "has":
            inside_has |= {id(n) for n in node.iter_subtrees()}
    paths = set()
    for node in tree.iter_subtrees():
        if node.data == "member_dot" and id(node) not in inside_has:
            chain = _chain(node)
            if chain is not None:
                paths.add(chain)
    return paths


def resolve(schema: dict[str, Any], path: Path) -> dict[str, Any]:
    for key in path:
        props = schema.get("properties", {})
        assert key in props, f"rule reads {'.'.join(path)}, which the schema does not have"
        schema = props[key]
    return schema


def all_rules() -> list[tuple[str, Path, dict[str, Any], int]]:
    out = []
    for kind in KINDS:
        for path, node, cardinality in rule_nodes(crdcheck.load_crds()[kind]):
            out.append((kind, path, node, cardinality))
    return out


def test_the_crds_have_rules_to_guard() -> None:
    rules = {(kind, ".".join(path)) for kind, path, _, _ in all_rules()}
    assert ("HyperparameterSweep", "spec") in rules
    assert ("HyperparameterSweep", "spec.searchSpace.*") in rules
    assert ("FineTuneJob", "spec.model") in rules


@pytest.mark.parametrize("kind", KINDS)
def test_every_list_and_map_under_a_rule_is_bounded(kind: str) -> None:
    unbounded = []
    for path, node, cardinality in rule_nodes(crdcheck.load_crds()[kind]):
        assert cardinality < 3 * 1024 * 1024, f"{kind}.{'.'.join(path)} sits in an unbounded list"
        for below, coll in collections_below(node, path):
            key = "maxItems" if coll.get("type") == "array" else "maxProperties"
            if key not in coll:
                unbounded.append(f"{'.'.join(below)} (no {key})")
    assert not unbounded, f"{kind}: unbounded under a CEL rule: {sorted(set(unbounded))}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_string_list_or_map_a_rule_reads_is_bounded(kind: str) -> None:
    problems = []
    for path, node, _ in rule_nodes(crdcheck.load_crds()[kind]):
        for rule in node["x-kubernetes-validations"]:
            for read in read_paths(rule["rule"]):
                target = resolve(node, read)
                where = ".".join((*path, *read))
                if target.get("type") == "string" or target.get("x-kubernetes-int-or-string"):
                    if "maxLength" not in target and "enum" not in target:
                        problems.append(f"{where}: string without maxLength or enum")
                elif target.get("type") == "array" and "maxItems" not in target:
                    problems.append(f"{where}: list without maxItems")
                elif isinstance(target.get("additionalProperties"), dict):
                    if "maxProperties" not in target:
                        problems.append(f"{where}: map without maxProperties")
    assert not problems, f"{kind}: {problems}"


def test_worst_case_cost_is_far_below_the_crd_limit() -> None:
    """A coarse upper bound: each rule may visit every element below it, every time it runs."""
    for kind in KINDS:
        total = 0
        for _, node, cardinality in rule_nodes(crdcheck.load_crds()[kind]):
            visits = 1
            for _, coll in collections_below(node):
                visits += bound(coll)
            total += cardinality * visits * len(node["x-kubernetes-validations"])
        assert total < PER_CRD_LIMIT / 100, f"{kind}: estimated {total}"


def test_the_guard_catches_an_unbounded_list() -> None:
    """The checks above can fail: an unbounded list under a rule is reported."""
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "size(self.names) > 0", "message": "m"}],
        "properties": {"names": {"type": "array", "items": {"type": "string"}}},
    }
    below = [p for p, c in collections_below(schema) if "maxItems" not in c]
    assert below == [("names",)]
    assert read_paths("size(self.names) > 0 && has(self.x.y)") == {("names",)}
