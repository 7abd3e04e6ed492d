"""Where a model folder may be mounted inside a replica: one rule for the manager (checked at creation) and
the agent (checked again before a start).

A destination must be an absolute, normalised path of plain characters (no ``:`` or ``,``, which container
runtimes read as mount options) that does not hide what the sandbox needs: not ``/``, ``/var`` or ``/tmp``
themselves, and nothing at or below the system directories.
"""

from __future__ import annotations

import posixpath
import re

MAX_MOUNT_DESTINATION = 256
# at or below these: kernel interfaces, devices, configuration, binaries, libraries, boot files, runtime sockets
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/boot", "/run", "/var/run")
# these themselves (a folder below them is fine): hiding them breaks the sandbox
WHOLE_DIRS = frozenset({"/", "/var", "/tmp"})
_PLAIN = re.compile(r"^/[A-Za-z0-9._@+=/-]*$")


def mount_destination_problem(dest: str) -> str | None:
    """Why ``dest`` is refused, or None when it is acceptable."""
    if not dest.startswith("/"):
        return "must be an absolute path"
    if len(dest) > MAX_MOUNT_DESTINATION:
        return f"must be at most {MAX_MOUNT_DESTINATION} characters"
    if not _PLAIN.match(dest):
        return "may contain only ASCII letters, digits and . _ @ + = - /"
    if ".." in dest.split("/"):
        return "must not contain '..'"
    norm = "/" + posixpath.normpath(dest).lstrip("/")
    if norm != dest:
        return f"must be normalised (use {norm!r})"
    top = norm.split("/")[1]
    if (norm in WHOLE_DIRS or top.startswith("lib")
            or any(norm == d or norm.startswith(d + "/") for d in SYSTEM_DIRS)):
        return "must not hide a system directory (/, /var, /tmp, or anything under /proc, /sys, /dev, /etc, " \
               "/usr, /bin, /sbin, /lib*, /boot, /run, /var/run)"
    return None
