"""``python -m streampro.cli COMMAND ...``: the ``streampro`` command (used by launchers such as accelerate)."""

import sys

from streampro.cli import main

sys.exit(main())
