"""Ray's own offline checks of a cluster launcher config, for ``distfair cluster validate``
(``distfair/deploy/launcher.py`` formats what they say; Ray is imported only here, in ``distributed``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging


def ray_up_checks(doc: dict) -> Exception | None:
    """Run ``ray.autoscaler._private.util.prepare_config`` then ``validate_config`` on a copy
    of ``doc`` (the first steps of ``ray up``, ray/autoscaler/_private/commands.py
    ``_bootstrap_config``), silencing Ray's log lines; return the exception Ray raised, or None
    when it accepts the config. Offline: the provider's bootstrap, which calls the cloud's
    API, is not run, and no Ray instance is started."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    captured = io.StringIO()
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)             # Ray's INFO/WARNING lines ("setting max workers ...")
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            validate_config(prepare_config(copy.deepcopy(doc)))
    except Exception as err:                     # noqa: BLE001 - any refusal of Ray's is a finding
        return err
    finally:
        logging.disable(previous)
    return None
