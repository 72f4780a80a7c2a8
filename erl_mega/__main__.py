"""`python -m erl_mega ...` is the `erl-mega` command."""

import sys

from erl_mega.cli import main

sys.exit(main())
