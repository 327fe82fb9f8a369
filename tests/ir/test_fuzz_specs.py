"""Fuzzing the spec reader: mutated zoo specs and mangled YAML text either load or raise
SpecError -- never another exception (KeyError, TypeError, RecursionError, ...) and never hang."""

from __future__ import annotations

import copy
import os
import signal
from contextlib import contextmanager

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmc.errors import SpecError
from ssmc.ir.ops import OPS
from ssmc.ir.spec import load_spec
from ssmc.paths import zoo_dir

ZOO = {p.stem: p.read_text() for p in sorted(zoo_dir().glob("*.yaml"))}
DATA = {k: yaml.safe_load(v) for k, v in ZOO.items()}
SECONDS_PER_EXAMPLE = 5  # a load takes milliseconds; anything near this is a hang

SCALE = float(os.environ.get("SSMC_FUZZ_SCALE", "1"))  # e.g. 20 for a long bug hunt


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds):
    def on_alarm(signum, frame):
        raise Hang(f"load_spec ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_loads_or_spec_error(text: str) -> None:
    """The property: success, or a SpecError with a location and a one-line message."""
    with time_limit(SECONDS_PER_EXAMPLE):
        try:
            load_spec(text)
        except SpecError as e:
            msg = str(e)
            assert msg and e.field is not None
            assert e.loc.line >= 0 and e.loc.col >= 0
            assert "\n" not in msg and "\r" not in msg, "an error is one line"
            assert len(msg) < 2000, "error messages must stay short"


# ---- values and mutations ----------------------------------------------------------------------

GARBAGE_DIMS = ["2**999", "((((", "a/0", "1/0", "10**10**10", "ceil(", "d_model d_model", "", " ",
                "2.5", "-1", "seqlen", "batch*2", "__import__(os)", "d_model/" * 30 + "1",
                "(" * 100 + "1" + ")" * 100, "9" * 400, "pow2(2**40+1)", "min()", "max(1,)", "$x",
                "(1/3)**64", "0**0"]

scalars = st.one_of(
    st.integers(-5, 300),
    st.integers(min_value=2**40, max_value=10**30),
    st.just(10**400),
    st.integers(max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(GARBAGE_DIMS),
    st.none(),
    st.booleans(),
    st.sampled_from(sorted(OPS)),
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=6)


def _paths(obj, prefix=()):
    """Every path into a nested structure of dicts and lists: tuples of keys / indices."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _typo(data, word: str) -> str:
    word = str(word)
    kind = data.draw(st.sampled_from(["drop", "swap", "add", "case"]))
    i = data.draw(st.integers(0, max(0, len(word) - 1)))
    if kind == "drop" and len(word) > 1:
        return word[:i] + word[i + 1:]
    if kind == "swap" and len(word) > 1:
        i = min(i, len(word) - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "case":
        return word.upper()
    return word[:i] + data.draw(st.sampled_from("aeiou_xz1")) + word[i:]


def _nodes_lists(doc):
    """(path, list) of every `nodes:` list (top level and inside blocks)."""
    out = []
    for path in _paths(doc):
        if path and path[-1] == "nodes" and isinstance(_get(doc, path), list):
            out.append(_get(doc, path))
    return out


def mutate(data, doc):
    kind = data.draw(st.sampled_from(["delete", "rename", "replace", "op", "input", "dup_node",
                                      "add_key", "dims", "swap_nodes"]))
    paths = [p for p in _paths(doc) if p]
    nodes_lists = _nodes_lists(doc)
    if kind == "delete":
        path = data.draw(st.sampled_from(paths))
        del _get(doc, path[:-1])[path[-1]]
    elif kind == "rename":
        keyed = [p for p in paths if isinstance(_get(doc, p[:-1]), dict)]
        path = data.draw(st.sampled_from(keyed))
        parent = _get(doc, path[:-1])
        parent[_typo(data, path[-1])] = parent.pop(path[-1])
    elif kind == "replace":
        path = data.draw(st.sampled_from(paths))
        _get(doc, path[:-1])[path[-1]] = data.draw(values)
    elif kind == "op":
        nodes = data.draw(st.sampled_from(nodes_lists))
        node = data.draw(st.sampled_from(nodes))
        if isinstance(node, dict):
            node["op"] = data.draw(st.sampled_from(sorted(OPS)) | st.just(_typo(data, node.get("op", "x"))))
    elif kind == "input":
        nodes = data.draw(st.sampled_from(nodes_lists))
        i = data.draw(st.integers(0, len(nodes) - 1))
        later = [n.get("name") for n in nodes[i:] if isinstance(n, dict)]  # itself included: a self-loop
        ref = data.draw(st.sampled_from(later + ["nowhere", "h", "tokens", "x"]))
        if isinstance(nodes[i], dict):
            ins = nodes[i].get("inputs")
            if isinstance(ins, list) and ins:
                ins[data.draw(st.integers(0, len(ins) - 1))] = ref
            elif isinstance(ins, dict) and ins:
                ins[data.draw(st.sampled_from(sorted(ins, key=str)))] = ref
            else:
                nodes[i]["inputs"] = [ref]
    elif kind == "dup_node":
        nodes = data.draw(st.sampled_from(nodes_lists))
        i = data.draw(st.integers(0, len(nodes) - 1))
        nodes.insert(data.draw(st.integers(0, len(nodes))), copy.deepcopy(nodes[i]))
    elif kind == "add_key":
        dicts = [p for p in _paths(doc) if isinstance(_get(doc, p), dict)]
        target = _get(doc, data.draw(st.sampled_from(dicts)))
        key = data.draw(st.sampled_from(["algorithm", "variant", "heads", "block", "times", "outputs",
                                         "tied", "start", "dtype", "shape", "chunk", "sizes", "axis"])
                        | st.text(min_size=1, max_size=8))
        target[key] = data.draw(values | st.sampled_from(["fft", "associative", "tree", "wavefront",
                                                          "chunked", "ssd", "dense", "mamba_block"]))
    elif kind == "dims":
        dims = doc.get("dims")
        if isinstance(dims, dict) and dims:
            name = data.draw(st.sampled_from(sorted(dims, key=str)))
            dims[name] = data.draw(st.sampled_from(GARBAGE_DIMS + sorted(map(str, dims))))
    elif kind == "swap_nodes":
        nodes = data.draw(st.sampled_from(nodes_lists))
        i, j = data.draw(st.integers(0, len(nodes) - 1)), data.draw(st.integers(0, len(nodes) - 1))
        nodes[i], nodes[j] = nodes[j], nodes[i]


@settings(max_examples=n(400), **SETTINGS)
@given(st.data())
def test_mutated_zoo_specs(data):
    name = data.draw(st.sampled_from(sorted(DATA)))
    doc = copy.deepcopy(DATA[name])
    for _ in range(data.draw(st.integers(1, 3))):
        if not isinstance(doc, dict) or not _nodes_lists(doc):
            break
        mutate(data, doc)
    text = yaml.safe_dump(doc, sort_keys=False)
    check_loads_or_spec_error(text)


# ---- raw text ----------------------------------------------------------------------------------

junk = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.sampled_from([":", "- ", "{", "}", "[", "]", "&a ", "*a", "!!python/object:os.system ", "\t", "\n",
                     "? ", "<<: *a", "---\n", "...\n", "%YAML 1.1\n", "!!binary ", "\x00", "\ufeff",
                     "\u2028", "'", '"', "#", "|", ">", "!!set ", "2024-01-01", "1e-3", "0x1F", "~"]),
)


@settings(max_examples=n(300), **SETTINGS)
@given(st.sampled_from(sorted(ZOO)), st.data())
def test_mangled_yaml_text(name, data):
    text = ZOO[name]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 30)))
        text = text[:i] + data.draw(junk) + text[j:]
    check_loads_or_spec_error(text)


@settings(max_examples=n(100), **SETTINGS)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace")))
def test_arbitrary_text(text):
    check_loads_or_spec_error(text + "\n")  # the newline keeps it from being read as a path


@pytest.mark.parametrize("text", [
    "a: &a [*a]\n",                                   # recursive alias
    "x: " + "[" * 1500 + "]" * 1500 + "\n",          # deep nesting
    "x: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
    "a: &a [1,2,3,4,5,6,7,8,9]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\nname: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n",   # billion laughs
    "name: !!python/object/apply:os.system [echo hi]\n",
    "? [a, b]\n: 1\n",
    "name: x\n---\nname: y\n",
    "\x00\n",
])
def test_hostile_yaml(text):
    check_loads_or_spec_error(text)
