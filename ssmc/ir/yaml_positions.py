"""YAML loading that keeps line/column of every key and value.

Specs are data: this is yaml.SafeLoader (no tags that construct Python objects) with position
bookkeeping added; nothing is ever eval'ed.
"""

from __future__ import annotations

import yaml

from ssmc.errors import Loc, SpecError


class LocDict(dict):
    """A mapping that remembers where each key and value sat in the file."""

    loc: Loc
    key_locs: dict
    value_locs: dict

    def key_loc(self, key) -> Loc:
        return self.key_locs.get(key, self.loc)

    def value_loc(self, key) -> Loc:
        return self.value_locs.get(key, self.key_loc(key))


class LocList(list):
    loc: Loc
    item_locs: list

    def item_loc(self, i: int) -> Loc:
        return self.item_locs[i] if 0 <= i < len(self.item_locs) else self.loc


def _loc(file: str, mark) -> Loc:
    return Loc(file, mark.line + 1, mark.column + 1)


class _PositionSafeLoader(yaml.SafeLoader):
    filename = "<spec>"

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            raise SpecError(_loc(self.filename, node.start_mark), "<mapping>",
                            "expected a mapping")
        self.flatten_mapping(node)
        out = LocDict()
        out.loc = _loc(self.filename, node.start_mark)
        out.key_locs, out.value_locs = {}, {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise SpecError(_loc(self.filename, key_node.start_mark), str(key),
                                "a mapping key must be a plain scalar") from None
            if key in out:
                raise SpecError(_loc(self.filename, key_node.start_mark), str(key),
                                "duplicate key (each key may appear once per mapping)")
            out[key] = self.construct_object(value_node, deep=True)
            out.key_locs[key] = _loc(self.filename, key_node.start_mark)
            out.value_locs[key] = _loc(self.filename, value_node.start_mark)
        return out

    def construct_sequence(self, node, deep=False):
        out = LocList(self.construct_object(child, deep=True) for child in node.value)
        out.loc = _loc(self.filename, node.start_mark)
        out.item_locs = [_loc(self.filename, child.start_mark) for child in node.value]
        return out


_PositionSafeLoader.add_constructor("tag:yaml.org,2002:map", _PositionSafeLoader.construct_mapping)
_PositionSafeLoader.add_constructor("tag:yaml.org,2002:seq", _PositionSafeLoader.construct_sequence)


def load_yaml(text: str, filename: str = "<spec>"):
    """Parse YAML text with positions; YAML syntax errors become SpecErrors with file:line."""
    loader = None
    try:
        # The constructor already scans the text (non-printable characters raise ReaderError).
        loader = _PositionSafeLoader(text)
        loader.filename = filename
        return loader.get_single_data()
    except SpecError:
        raise
    except yaml.reader.ReaderError as e:  # no mark, only a character offset
        line = text.count("\n", 0, e.position) + 1
        col = e.position - (text.rfind("\n", 0, e.position) + 1) + 1
        raise SpecError(Loc(filename, line, col), "<yaml>",
                        f"not valid YAML: character {e.character:#x} is not allowed") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = _loc(filename, mark) if mark else Loc(filename, 1, 1)
        raise SpecError(loc, "<yaml>", f"not valid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise SpecError(Loc(filename, 1, 1), "<yaml>", f"not valid YAML: {e}") from None
    except RecursionError:
        raise SpecError(Loc(filename, 1, 1), "<yaml>", "nesting too deep") from None
    finally:
        if loader is not None:
            loader.dispose()
