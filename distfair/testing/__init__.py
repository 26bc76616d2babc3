"""The plug-in contracts as checks anyone can run (like ``optuna.testing``): a defense, an attack
or an evaluation summary, the repository's or a third party's, is checked by the same code.

- :mod:`distfair.testing.defenses`: ``check_defense(cls, references)`` and its checks
  (``CHECKS``), on a tiny problem with the defense's ``TEST_OPTIONS``; ``contract_references``
  writes the reference files (a teacher checkpoint) a defense may read.
- :mod:`distfair.testing.attacks`: ``check_attack(cls)`` and ``CHECKS``, with the attack's
  ``TEST_OPTIONS``.
- :mod:`distfair.testing.summaries`: ``check_summary(cls, tmp_dir)`` and ``CHECKS``, on a toy
  grid of evaluations, with the summary's ``TEST_OPTIONS``.

A check raises ``AssertionError`` (or the contract's own error) naming what broke; nothing here
needs a test runner. The repository's tests (``tests/test_*_contract.py``) run every check on
every registered class. Nothing is imported until it is used.
"""
from distfair.registry import lazy_package

__all__ = ["check_attack", "check_defense", "check_summary", "contract_references"]

lazy_package(__name__, {
    "check_attack": ".attacks:check_attack",
    "check_defense": ".defenses:check_defense",
    "check_summary": ".summaries:check_summary",
    "contract_references": ".defenses:contract_references",
})
