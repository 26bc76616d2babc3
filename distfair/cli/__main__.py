"""``python -m distfair.cli``: the ``distfair`` command."""
import sys

from distfair.cli.main import main

sys.exit(main())
