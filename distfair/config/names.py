"""The names of a configuration that become part of MLflow keys: an evaluation's name
(``<name>/robust_acc``), a subgroup attribute's (``group_acc/<attribute>/<group>``), every
resolved config key (a parameter: ``scaling.resources_per_worker.<resource>``). MLflow refuses
a key outside its rule only when the key is logged, after training; these are checked at load.

MLflow's rule, copied from ``mlflow/utils/validation.py`` (MLflow 3.17:
``validate_param_and_metric_name`` off Windows, ``path_not_unique``, ``MAX_ENTITY_KEY_LENGTH``;
the same for metric, parameter and tag keys) instead of imported, because importing MLflow
takes seconds. ``tests/test_hostile_inputs.py`` compares the copy with the installed MLflow on a
list of keys, so the two cannot drift apart unnoticed. One deliberate difference: MLflow's
``re.match(r"^...$")`` lets one trailing newline through (``$`` matches before it); here
:func:`re.fullmatch` does not.
"""
from __future__ import annotations

import posixpath
import re

from distfair.config.limits import shown

#: MLflow's characters of a key: letters, digits and ``_`` (``\\w``, Unicode), ``.``, ``-``,
#: space, ``:`` and ``/``
MLFLOW_KEY = re.compile(r"[/\w.\- :]*")
#: MLflow's ``MAX_ENTITY_KEY_LENGTH``
MAX_KEY_LENGTH = 250
#: one part of a metric key (between its ``/``): MLflow's characters less ``/`` and ``:``
NAME = re.compile(r"[\w.\- ]+")
#: the longest evaluation or subgroup attribute name, as a configuration name
MAX_NAME_LENGTH = 64


def mlflow_key_problem(key: str) -> str | None:
    """Why MLflow would refuse ``key`` as a metric, parameter or tag key, or None."""
    if len(key) > MAX_KEY_LENGTH:
        return f"longer than MLflow's {MAX_KEY_LENGTH} characters"
    if not MLFLOW_KEY.fullmatch(key):
        return ("MLflow allows only letters, digits, '_', '-', '.', ' ', ':' and '/' in a key, "
                f"got {shown(key)}")
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"):
        return f"MLflow refuses a key that reads as another path ({shown(key)} reads as {shown(norm)})"
    return None


def name_problem(name) -> str | None:
    """Why ``name`` cannot be one part of MLflow metric keys (an evaluation's or a subgroup
    attribute's name), or None."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH \
            or name == "." or name.startswith(".."):
        return (f"must be 1-{MAX_NAME_LENGTH} letters, digits, spaces, '_', '-' or '.' (neither '.' nor starting "
                f"with '..'): it becomes part of MLflow metric keys; got {shown(name)}")
    return None
