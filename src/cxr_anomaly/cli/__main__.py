"""``python -m cxr_anomaly.cli``: the same as the ``cxr-anomaly`` command."""

import sys

from . import main

sys.exit(main())
