"""``python -m icetrain``: the CLI, also as torchrun's entry (``torchrun --nnodes 2 ... -m icetrain predict ...``)."""

import sys

from icetrain.cli import main

sys.exit(main())
