"""``python -m manager`` runs the manager daemon (same as ``moorage manager``)."""

import sys

from manager.cli.main import main

sys.exit(main(["manager", *sys.argv[1:]]))
