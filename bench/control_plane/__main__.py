"""``python -m bench.control_plane``: see :mod:`bench.control_plane.run`."""

import sys

from bench.control_plane.run import main

sys.exit(main())
