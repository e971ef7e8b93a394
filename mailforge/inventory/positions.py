"""YAML loading that remembers where every key and value came from.

Pydantic reports errors by key path; a person needs file:line:column.  This
loader builds plain Python data and a map from key path to source position,
and refuses duplicate keys (YAML would silently keep the last one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import Problem

KeyPath = tuple  # of str | int


@dataclass
class Located:
    """Data from one YAML file with the position of every node in it."""

    file: Path
    data: object
    values: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    unreadable: set[KeyPath] = field(default_factory=set)  # already reported: schema errors there would repeat it

    def position(self, path: KeyPath) -> tuple[int | None, int | None]:
        """Line and column of `path`, or of its nearest ancestor that exists."""
        path = tuple(path)
        while True:
            if path in self.keys:
                return self.keys[path]
            if path in self.values:
                return self.values[path]
            if not path:
                return (None, None)
            path = path[:-1]

    def problem(self, path: KeyPath, message: str, expected: str = "") -> Problem:
        line, column = self.position(path)
        return Problem(self.file, line, column, format_path(path), message, expected)


def format_path(path: KeyPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _mark(node: yaml.Node) -> tuple[int, int]:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def load_yaml(file: Path, text: str) -> tuple[Located | None, list[Problem]]:
    """Parse `text`; on failure return the problems instead of raising."""
    parser = None
    try:
        parser = yaml.SafeLoader(text)  # checks every character up front
        node = parser.get_single_node()
    except yaml.reader.ReaderError as exc:
        line: int | None = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return None, [Problem(file, line, column, "", f"not valid YAML: character {exc.character!r} is not allowed", "printable text")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        what = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return None, [Problem(file, line, column, "", f"not valid YAML: {what}", "a YAML mapping of topology keys")]
    finally:
        if parser is not None:
            parser.dispose()
    located = Located(file, None)
    problems: list[Problem] = []
    loader = yaml.SafeLoader("")  # only constructs scalars and merges keys
    if node is None:
        return located, [Problem(file, 1, 1, "", "the file is empty", "a YAML mapping with domains, relays and cores")]

    def build(node: yaml.Node, path: KeyPath):
        located.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            try:
                loader.flatten_mapping(node)
            except yaml.YAMLError as exc:
                problems.append(Problem(file, *_mark(node), format_path(path), f"not valid YAML: {getattr(exc, 'problem', exc)}", "a plain mapping"))
                return {}
            result = {}
            for key_node, value_node in node.value:
                key = scalar(key_node, path)
                if not isinstance(key, (str, int)):
                    problems.append(Problem(file, *_mark(key_node), format_path(path), f"key {key!r} is not a plain name", "a string key"))
                    continue
                key = str(key)
                child = path + (key,)
                if key in result:
                    first = located.keys[child]
                    problems.append(
                        Problem(file, *_mark(key_node), format_path(child), f"duplicate key (first given on line {first[0]})", "each key once per mapping")
                    )
                    continue
                located.keys[child] = _mark(key_node)
                result[key] = build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (index,)) for index, item in enumerate(node.value)]
        return scalar(node, path)

    def scalar(node: yaml.Node, path: KeyPath):
        try:
            return loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            what = getattr(exc, "problem", None) or str(exc)
            located.unreadable.add(path)
            problems.append(
                Problem(
                    file,
                    *_mark(node),
                    format_path(path),
                    f"value {node.value!r} cannot be read: {what}",
                    "a plain string, number, yes/no, list or mapping (no tags such as !vault)",
                )
            )
            return None

    located.data = build(node, ())
    return located, problems
