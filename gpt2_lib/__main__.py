"""`python -m gpt2_lib`: the same as the `gpt2-lib` command."""

import sys

from gpt2_lib.cli import main

sys.exit(main())
