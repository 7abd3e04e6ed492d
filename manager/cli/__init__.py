"""The ``moorage`` command-line interface (see ``manager.cli.main``)."""
