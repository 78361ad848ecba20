"""YAML as configs read it: ``yaml.SafeLoader`` (plain data, never code) that refuses a key
repeated in a mapping, which YAML loaders otherwise silently resolve to the last one."""

from __future__ import annotations

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML document repeats a key (YAML loaders silently keep the last one)."""

    def __init__(self, key: str, first_line: int, second_line: int):
        super().__init__(f"duplicate key {key!r} (lines {first_line} and {second_line})")
        self.key, self.first_line, self.second_line = key, first_line, second_line


_MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeySafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (plain data only, never code) that refuses a key repeated in a mapping.

    Keys brought in by a ``<<: *anchor`` merge may still be overridden, as YAML intends.
    """

    def construct_document(self, node):
        self._check_unique_keys(node, (), set())
        return super().construct_document(node)

    def _check_unique_keys(self, node, path: tuple, seen: set) -> None:
        if id(node) in seen:  # aliases may make the node graph cyclic
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if name is not None and key_node.tag != _MERGE_TAG:
                    key = self.construct_object(key_node)
                    try:
                        first = lines.setdefault(key, key_node.start_mark.line + 1)
                    except TypeError:  # an unhashable key is refused by the constructor itself
                        first = None
                    if first is not None and first != key_node.start_mark.line + 1:
                        raise DuplicateKeyError(
                            ".".join([*path, str(key)]), first, key_node.start_mark.line + 1
                        )
                self._check_unique_keys(value_node, (*path, str(name)), seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                where = (*path[:-1], f"{path[-1]}[{i}]") if path else (f"[{i}]",)
                self._check_unique_keys(item, where, seen)


def read_yaml(text: str):
    """Like ``yaml.safe_load``, with :class:`UniqueKeySafeLoader`."""
    loader = UniqueKeySafeLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
