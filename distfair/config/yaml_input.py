"""Reading YAML that users give: every file ``distfair run``, ``distfair sweep`` and ``distfair
cluster validate`` read (:func:`read_yaml_documents`), every ``--set key=value`` value and a
RayJob's ``runtimeEnvYAML`` (:func:`parse_yaml_text`). One loader, with the limits of
:mod:`distfair.config.limits`: only a regular file of at most ``MAX_FILE_BYTES`` is opened; a key
given twice in one mapping, an integer of more than ``MAX_INTEGER_DIGITS`` digits, a recursive
alias and a document of more than ``MAX_YAML_VALUES`` values or ``MAX_YAML_TEXT`` characters,
aliases expanded (the "billion laughs"), are refused before anything is built from them.
Problems are ``(key, reason)`` on one line: ``("line N", ...)`` where a line is known, else
``("(file)", ...)``."""
from __future__ import annotations

import functools
import os
import stat

from distfair.config.limits import MAX_FILE_BYTES, MAX_INTEGER_DIGITS, MAX_YAML_TEXT, MAX_YAML_VALUES

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class DuplicateKey(Exception):
    """A mapping key given twice (``line``: the second, 1-based)."""

    def __init__(self, key, first_mark, mark):
        self.key, self.first_line, self.line = key, first_mark.line + 1, mark.line + 1
        super().__init__(f"line {self.line}: {key}: duplicate key (first at line {self.first_line})")


class YamlRefused(Exception):
    """YAML that parses but is refused: ``(key, reason)``."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def check_expanded_size(root) -> None:
    """Raise :class:`YamlRefused` if the composed document ``root``, each alias counted as a copy of
    what it names, holds more than ``MAX_YAML_VALUES`` values or ``MAX_YAML_TEXT`` characters of
    scalar text, or an alias inside its own anchor. The graph of nodes is walked once (the sizes
    of a shared node are remembered), so a billion laughs costs as much as its few lines."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}      # id(node) -> (values, characters), capped just over the limits
    open_nodes: set[int] = set()                # on the path from the root: reaching one again is a cycle
    stack = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_nodes.discard(key)
            values, text = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            for child in _children(node):
                child_values, child_text = sizes[id(child)]
                values, text = values + child_values, text + child_text
            sizes[key] = (min(values, MAX_YAML_VALUES + 1), min(text, MAX_YAML_TEXT + 1))
            if values > MAX_YAML_VALUES:
                raise YamlRefused("(file)", f"more than {MAX_YAML_VALUES} values, each alias (*name) counted as a "
                                            f"copy of what it names; at most {MAX_YAML_VALUES}")
            if text > MAX_YAML_TEXT:
                raise YamlRefused("(file)", f"more than {MAX_YAML_TEXT} characters of text, each alias (*name) "
                                            f"counted as a copy of what it names; at most {MAX_YAML_TEXT}")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise YamlRefused(f"line {node.start_mark.line + 1}", "an alias inside its own anchor (a recursive "
                                                                  "structure); write the value out")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


@functools.lru_cache(maxsize=1)
def yaml_loader():
    """A safe YAML loader (libyaml's parser where installed) that refuses a key given twice in
    one mapping (plain YAML loaders keep the last value silently, so ``train:`` written twice
    would drop the first block without a word), a long integer, and a document too large once
    its aliases are expanded."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class StrictLoader(base):
        def construct_document(self, node):
            check_expanded_size(node)
            return super().construct_document(node)

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark)
                    except TypeError:            # an unhashable key: the constructor says so
                        continue
                    if first is not key_node.start_mark:
                        raise DuplicateKey(key, first, key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node):
            text = self.construct_scalar(node).lower().lstrip("+-")
            digits = sum(c.isalnum() for c in (text[2:] if text[:2] in ("0x", "0o", "0b") else text))
            if digits > MAX_INTEGER_DIGITS:
                raise YamlRefused(f"line {node.start_mark.line + 1}", f"an integer of {digits} digits; at most "
                                                                      f"{MAX_INTEGER_DIGITS}")
            return super().construct_yaml_int(node)

    StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
    return StrictLoader


def yaml_problem(err: Exception) -> tuple[str, str]:
    """``(key, reason)`` of a YAML file that does not load, on one line: ``("line N", ...)``
    where the parser knows the line."""
    if isinstance(err, YamlRefused):
        return err.key, err.reason
    if isinstance(err, DuplicateKey):
        return f"line {err.line}", (f"{err.key}: duplicate key (first at line {err.first_line}); YAML would keep "
                                    f"only the last, so remove one")
    if isinstance(err, RecursionError):          # the pure-Python parser (libyaml stops at depth 1000)
        return "(file)", "invalid YAML: nested too deeply"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(str(getattr(err, "problem", None) or err).split())
    context = " ".join(str(getattr(err, "context", None) or "").split())
    if mark is None:
        return "(file)", f"invalid YAML: {problem}"
    where = f" (column {mark.column + 1}" + (f", {context} at line {err.context_mark.line + 1})"
                                              if context and getattr(err, "context_mark", None) else ")")
    return f"line {mark.line + 1}", f"invalid YAML: {problem}{where}"


def parse_yaml_text(text: str, *, all_documents: bool = False):
    """The YAML document(s) of ``text`` with the loader's limits: ``(documents, None)`` or
    ``(None, (key, reason))``; ``documents`` is the one document (possibly None) or, with
    ``all_documents``, the list of non-null documents."""
    import yaml

    if len(text) > MAX_FILE_BYTES:
        return None, ("(file)", f"too large: {len(text)} characters; at most {MAX_FILE_BYTES} (1 MiB)")
    try:
        if all_documents:
            return [d for d in yaml.load_all(text, Loader=yaml_loader()) if d is not None], None
        return yaml.load(text, Loader=yaml_loader()), None
    except (yaml.YAMLError, DuplicateKey, YamlRefused, RecursionError) as err:
        return None, yaml_problem(err)


def read_file_bytes(path) -> tuple[bytes | None, tuple[str, str] | None]:
    """The bytes of ``path`` if it is a regular file of at most ``MAX_FILE_BYTES``, else
    ``(None, ("(file)", reason))``. A FIFO, a device (``/dev/zero``) or a directory is refused
    from its ``stat``, never opened for reading; the file is opened non-blocking and checked
    again, so one swapped in meanwhile cannot hang the read either."""
    try:
        kind = next((what for test, what in _KINDS if test(os.stat(path).st_mode)), None)
        if kind is None:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                info = os.fstat(f.fileno())
                kind = None if stat.S_ISREG(info.st_mode) else next((w for t, w in _KINDS if t(info.st_mode)),
                                                                   "not a file")
                size = info.st_size
                data = f.read(MAX_FILE_BYTES + 1) if kind is None and size <= MAX_FILE_BYTES else b""
                size = max(size, len(data))
    except OSError as err:
        return None, ("(file)", f"cannot read: {err.strerror or err}")
    if kind is not None:
        return None, ("(file)", f"not a regular file ({kind}); give a YAML file")
    if size > MAX_FILE_BYTES:
        return None, ("(file)", f"too large: {size} bytes; at most {MAX_FILE_BYTES} (1 MiB)")
    return data, None


def read_yaml_documents(path, *, all_documents: bool = False):
    """The YAML document(s) of a file, or ``(key, reason)`` saying why there are none usable:
    not a regular file, too large, unreadable, not UTF-8 text, a syntax error (``line N``), a
    duplicate key, a long integer, too large once its aliases are expanded. Returns
    ``(documents, None)`` or ``(None, (key, reason))`` as :func:`parse_yaml_text`."""
    data, problem = read_file_bytes(path)
    if problem is not None:
        return None, problem
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, ("(file)", f"not a text file (not UTF-8: byte {data[err.start]:#04x} at offset {err.start})")
    if "\x00" in text:
        return None, ("(file)", f"not a text file (a NUL byte at line {text[:text.index(chr(0))].count(chr(10)) + 1})")
    return parse_yaml_text(text, all_documents=all_documents)
