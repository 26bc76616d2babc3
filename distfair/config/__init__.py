"""The configuration format shared by ``distfair run`` and ``distfair sweep``.

A YAML file with these top-level blocks (see tune_spaces/quickstart.yaml for a commented one):

``defense``, ``dataset``, ``model``, ``attack``
    ``{name: <registry name>, <option>: <value>, ...}`` (a bare string means ``{name: ...}``).
    The options of each registry entry are the keyword-only arguments of its constructor;
    their annotations give the accepted types. ``attack`` is the training attack (null for
    defenses that need none).
``train``
    epochs, batch size, optimiser, learning rate and schedule (``TRAIN_FIELDS``).
``eval``
    ``attacks``: a list of ``{name: <label>, attack: <registry name>, target: ..., <option>: ...}``.
    The first is the primary attack. A missing ``eps`` is inherited from the training attack
    when the attack requires one (physical attacks default to no budget beyond the valid
    range); PGD's step defaults to eps/4. ``target``: null (untargeted), a class index or
    name, ``random`` (a random wrong class per sample) or ``every`` (each wrong class in turn,
    worst case per sample, targeted success matrix). Default: one PGD-20 at the training ε.
    ``subgroups``: ``{<attribute>: metadata | {<class name or index>: <group>, ...}}`` or, for
    a metadata attribute, ``{source: metadata, exclude: [unknown, ""], min_group_size: 1,
    size_by: samples}`` (the defaults; ``size_by``: a per-sample attribute such as ``speaker``
    whose distinct values are counted instead of samples) or ``{intersect: [<attr>, ...],
    ...}`` (groups ``female|us``). "unknown" and empty values form no group unless
    ``exclude: []``; see ``distfair.evaluation.subgroup_spec`` and ``distfair.evaluation.subgroups``.
    ``summaries``: ``{<summary>: {<option>: ...}}``, the evaluation summaries to run beyond
    the default ones, with their options (e.g.
    ``auc_acc: {entries: [<eval.attacks names>]}``); see ``distfair.evaluation.summaries``.
``scaling``
    Ray Train resources of one seed run (``SCALING_FIELDS``).
``seeds``
    a list of integers, or an integer n meaning 0..n-1, or (``distfair run``) an adaptive rule
    ``{min, max, wave, until: {metric: <val_* metric>, ci95_halfwidth: <d>}}``: seeds 0, 1, 2, ...
    in waves until the metric's 95% interval is narrow enough (``seeds.py``).
``space``
    the search space used by ``distfair sweep``; ``distfair run`` ignores it.
``configurations``
    several configurations in one file for ``distfair run`` (a comparison, e.g. randomized
    smoothing at several N against neural rejection): ``{<name>: {<dotted key>: <value>, ...}}``,
    each entry's values replacing those of the file (a mapping value replaces the whole block:
    ``defense: {name: neural_rejection}``), ``--set`` applied last. ``distfair run`` runs each
    as its own configuration (a parent run named after it) over the same seeds; see
    :func:`load_configurations`. ``distfair sweep`` refuses it (a sweep searches ``space``).

Loading resolves every default, so the resolved dict records everything a run used. Every
problem is reported as ``<file>: <dotted key>: <reason>``; :class:`ConfigError` carries all of
them at once.

The modules: ``fields.py`` (the top-level blocks, ``TRAIN_FIELDS``, ``SCALING_FIELDS``),
``validation.py`` (:func:`validate`, :func:`check_structure`), ``buildable.py`` (the second
pass: building the cheap objects; :func:`dataset_spec`), ``overrides.py`` (``--set``),
``load.py`` (reading files: :func:`load_config`, :func:`load_configurations`),
``flat_keys.py`` (:func:`flatten`), ``schema.py`` (typed blocks), ``yaml_input.py`` (reading
every YAML file and ``--set`` value, in one place), ``seeds.py`` (the ``seeds`` block),
``limits.py`` (the limits on what a file may ask for, and how a value is shown in a message),
``names.py`` (MLflow's key rule, for the names that become part of MLflow keys) and ``space.py``
(the search space of ``distfair sweep``).
"""
from __future__ import annotations

from distfair.config.fields import (CONFIGURATION_NAME, DEFAULT_EVAL_ATTACK, EVAL_FIELDS, SCALING_FIELDS,
                                    TOP_LEVEL, TRAIN_FIELDS)
from distfair.config.schema import ConfigError
from distfair.config.overrides import apply_overrides, parse_override
from distfair.config.seeds import planned_seeds, seed_rule
from distfair.config.validation import MAX_SEED_COUNT, check_structure, configuration_problems, validate
from distfair.config.buildable import dataset_spec
from distfair.config.load import load_config, load_configurations, read_document
from distfair.config.flat_keys import flatten

__all__ = [
    "CONFIGURATION_NAME", "ConfigError", "DEFAULT_EVAL_ATTACK", "EVAL_FIELDS", "MAX_SEED_COUNT", "SCALING_FIELDS",
    "TOP_LEVEL", "TRAIN_FIELDS", "apply_overrides", "check_structure", "configuration_problems", "dataset_spec",
    "flatten", "load_config", "load_configurations", "parse_override", "planned_seeds", "read_document", "seed_rule",
    "validate",
]
