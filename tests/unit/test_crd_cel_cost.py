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

The real estimator runs whenever a cluster test installs the CRDs (tests/support/plane.py:
kube-apiserver refuses a CRD over budget). This offline check stays because it needs no
control plane and names the unbounded list or string, where the server names a total.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import celpy
import pytest
from lark import Tree

from support.crds import load_crds

pytestmark = pytest.mark.unit

KINDS = ["FineTuneJob", "HyperparameterSweep"]
_ENV = celpy.Environment()
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


MACROS = {"all", "exists", "exists_one", "map", "filter"}


def _chain(tree: Tree, bindings: dict[str, Path]) -> Path | None:
    """`self.a.b` as ("a", "b"), `v.c` as v's binding + ("c",); None for anything else."""
    names: list[str] = []
    node: Any = tree
    while isinstance(node, Tree):
        if node.data == "member_dot":
            names.append(str(node.children[1]))
            node = node.children[0]
        elif node.data in ("member", "primary") and len(node.children) == 1:
            node = node.children[0]
        elif node.data == "ident":
            root = str(node.children[0])
            base = () if root == "self" else bindings.get(root)
            return None if base is None else (*base, *reversed(names))
        else:
            return None
    return None


def _bindings(tree: Tree) -> dict[str, Path]:
    """Macro variables -> what they range over: `self.xs.all(x, ...)` binds x to xs[]."""
    bindings: dict[str, Path] = {}
    for node in tree.iter_subtrees_topdown():
        if node.data != "member_dot_arg":
            continue
        subtrees = [c for c in node.children if isinstance(c, Tree)]
        macro = next((str(c) for c in node.children if not isinstance(c, Tree)), "")
        if macro not in MACROS or len(subtrees) != 2:
            continue
        receiver = _chain(subtrees[0], bindings)
        first = subtrees[1].children[0] if subtrees[1].children else None
        idents = [n for n in first.iter_subtrees_topdown() if n.data == "ident"] if first else []
        if receiver is not None and idents:
            bindings[str(idents[0].children[0])] = (*receiver, "[]")
    return bindings


def read_paths(rule: str) -> set[Path]:
    """Paths the rule reads as values, below `self` or through macro variables (an element
    is `[]`); presence tests with has() are left out."""
    tree = _ENV.compile(rule)
    bindings = _bindings(tree)
    inside_has: set[int] = set()
    for node in tree.iter_subtrees():
        if node.data == "ident_arg" and str(node.children[0]) == "has":
            inside_has |= {id(n) for n in node.iter_subtrees()}
    paths = set()
    for node in tree.iter_subtrees():
        if node.data in ("member_dot", "ident") and id(node) not in inside_has:
            chain = _chain(node, bindings)
            if chain:
                paths.add(chain)
    return paths


def resolve(schema: dict[str, Any], path: Path) -> dict[str, Any] | None:
    """The schema node a read path lands on; None for a map key (keys cannot be bounded,
    maxProperties bounds how many there are)."""
    for key in path:
        if key == "[]" and schema.get("type") == "array":
            schema = schema["items"]
        elif key == "[]":
            return None
        else:
            props = schema.get("properties", {})
            assert key in props, f"a rule reads {'.'.join(path)}, which the schema does not have"
            schema = props[key]
    return schema


def all_rules() -> list[tuple[str, Path, dict[str, Any], int]]:
    out = []
    for kind in KINDS:
        for path, node, cardinality in rule_nodes(load_crds()[kind]):
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
    for path, node, cardinality in rule_nodes(load_crds()[kind]):
        assert cardinality < 3 * 1024 * 1024, f"{kind}.{'.'.join(path)} sits in an unbounded list"
        for below, coll in collections_below(node, path):
            key = "maxItems" if coll.get("type") == "array" else "maxProperties"
            if key not in coll:
                unbounded.append(f"{'.'.join(below)} (no {key})")
    assert not unbounded, f"{kind}: unbounded under a CEL rule: {sorted(set(unbounded))}"


def unbounded(target: dict[str, Any]) -> str | None:
    """Why reading this node has no bounded cost, or None."""
    if target.get("type") == "string" or target.get("x-kubernetes-int-or-string"):
        return None if "maxLength" in target or "enum" in target else "string without maxLength"
    if target.get("type") == "array":
        return None if "maxItems" in target else "list without maxItems"
    if isinstance(target.get("additionalProperties"), dict) and "maxProperties" not in target:
        return "map without maxProperties"
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_every_string_list_or_map_a_rule_reads_is_bounded(kind: str) -> None:
    problems = []
    for path, node, _ in rule_nodes(load_crds()[kind]):
        for rule in node["x-kubernetes-validations"]:
            for read in read_paths(rule["rule"]):
                target = resolve(node, read)
                why = None if target is None else unbounded(target)
                if why:
                    problems.append(f"{'.'.join((*path, *read))}: {why}")
    assert not problems, f"{kind}: {problems}"


def test_worst_case_cost_is_far_below_the_crd_limit() -> None:
    """A coarse upper bound: each rule may visit every element below it, every time it runs."""
    for kind in KINDS:
        total = 0
        for _, node, cardinality in rule_nodes(load_crds()[kind]):
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
    assert unbounded({"type": "string"}) == "string without maxLength"
    assert unbounded({"type": "string", "enum": ["a"]}) is None
    rule = "self.vs.exists(v, v.path == self.p) && self.m.all(k, k in {'a': 1})"
    assert read_paths(rule) == {
        ("vs",),
        ("vs", "[]"),
        ("vs", "[]", "path"),
        ("p",),
        ("m",),
        ("m", "[]"),
    }
