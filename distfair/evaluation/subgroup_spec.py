"""The forms of one ``eval.subgroups`` entry and their defaults, in pure Python (no PyTorch, no
NumPy): the configuration's first pass reads them without importing the math.

``<attr>: metadata`` and ``<attr>: {source: metadata, ...}`` take the dataset's attribute
``<attr>``; ``<name>: {intersect: [<attr>, <attr>, ...], ...}`` crosses several of them
(groups such as ``female|us``); any other mapping is a class -> group map. The options of the
two metadata forms (:data:`OPTIONS`; the bare word takes every default):

- ``exclude``: values that form no group, matched case-insensitively after stripping spaces;
  default :data:`DEFAULT_EXCLUDE` (missing metadata is not a group: the speech paper's groups
  are self-identified values, and its loaders mark a blank or implausible field "unknown").
  ``exclude: []`` keeps them. Under ``intersect`` a sample is left out when any of its values,
  or its combined group name, is listed.
- ``min_group_size``: the smallest group kept (default 1: every group with a sample), counted
  in ``size_by`` units over the split's samples before any evaluation leaves some out.
- ``size_by``: ``samples`` (default) or a per-sample attribute whose distinct values are
  counted instead, e.g. ``speaker`` (AudioMNIST, Common Voice): on AudioMNIST every speaker
  gives the test set the same number of clips, so a one-speaker group looks as large as any.

A class -> group map whose class is literally named ``source`` or ``intersect`` gives that
class by its index (a mapping with either key is the options form).
"""
from __future__ import annotations

METADATA = "metadata"
SAMPLES = "samples"
#: the values left out of a metadata attribute unless ``exclude`` says otherwise
DEFAULT_EXCLUDE = ("unknown", "")
#: the keys of the options form, in the order the resolved configuration lists them
OPTIONS = ("source", "intersect", "exclude", "min_group_size", "size_by")


def is_options_form(source) -> bool:
    """``{source: ..., ...}`` or ``{intersect: [...], ...}`` (not a class -> group map)."""
    return isinstance(source, dict) and ("source" in source or "intersect" in source)


def metadata_options(source) -> dict | None:
    """The options of a metadata entry with every default filled in (``intersect`` only when
    given); None for a class -> group map. No checks: see ``subgroup_problems``."""
    if source == METADATA:
        source = {}
    elif not is_options_form(source):
        return None
    out = {"source": METADATA}
    if source.get("intersect") is not None:
        out["intersect"] = [str(a) for a in source["intersect"]]
    exclude = source.get("exclude")
    out["exclude"] = list(DEFAULT_EXCLUDE) if exclude is None else [str(v) for v in exclude]
    out["min_group_size"] = int(source.get("min_group_size", 1))
    out["size_by"] = str(source.get("size_by", SAMPLES))
    return out


def needed_attributes(attr: str, source) -> list[str]:
    """The dataset attributes a metadata entry reads (its own or its ``intersect`` list, and a
    ``size_by`` attribute); [] for a class -> group map."""
    options = metadata_options(source)
    if options is None:
        return []
    return [*(options.get("intersect") or [attr]), *([options["size_by"]] if options["size_by"] != SAMPLES else [])]


def excluded_matcher(exclude) -> set[str]:
    """The normalised ``exclude`` values a group value is compared with."""
    return {str(v).strip().lower() for v in exclude}


def _attribute_name_problem(name) -> str | None:
    if not isinstance(name, str) or not name or "/" in name:
        return "an attribute name must be a non-empty string without '/'"
    return None


def subgroup_problems(attr: str, source: dict) -> list[tuple[str, str]]:
    """(dotted key, reason) for every problem of one options-form entry ``eval.subgroups.<attr>``."""
    key = f"eval.subgroups.{attr}"
    problems = [(f"{key}.{k}", f"unknown key; known: {', '.join(OPTIONS)}") for k in source if k not in OPTIONS]
    if "source" in source and source["source"] != METADATA:
        problems.append((f"{key}.source", f"must be 'metadata' (a class -> group map is written without "
                                          f"'source'), got {source['source']!r}"))
    if "intersect" in source:
        names = source["intersect"]
        if (not isinstance(names, list) or len(names) < 2 or any(_attribute_name_problem(n) for n in names)
                or len(set(names)) != len(names)):
            problems.append((f"{key}.intersect", f"must list at least 2 distinct attribute names (non-empty "
                                                 f"strings without '/'), got {names!r}"))
    exclude = source.get("exclude", [])
    if not isinstance(exclude, list) or any(isinstance(v, (dict, list, bool)) or v is None for v in exclude):
        problems.append((f"{key}.exclude", f"must be a list of plain values (e.g. [unknown]), got {exclude!r}"))
    size = source.get("min_group_size", 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        problems.append((f"{key}.min_group_size", f"must be a positive integer, got {size!r}"))
    size_by = source.get("size_by", SAMPLES)
    if _attribute_name_problem(size_by):
        problems.append((f"{key}.size_by", f"must be 'samples' or the name of a per-sample attribute "
                                           f"(e.g. speaker), got {size_by!r}"))
    return problems
