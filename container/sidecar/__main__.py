"""``python -m container.sidecar``: the model server (see :mod:`container.sidecar.cli`)."""

import sys

from container.sidecar.cli import main

sys.exit(main())
