"""``moorage folder``: model folders (Backend.AI "vfolders" with usage mode ``model``).

- ``folder create NAME``        → ``POST /folders {"name": NAME, "usage_mode": "model"}``
- ``folder list``               → ``GET /folders``
- ``folder upload NAME PATH...`` → ``POST /folders/{NAME}/files`` (multipart/form-data, streamed)

Upload layout: a file uploads as its basename at the folder root; a directory uploads its *contents* at the
folder root (like ``cp -r DIR/. folder/``), keeping relative paths. Inside a directory, symlinks to regular
files are followed; other symlinks (to directories, dangling) and special files are skipped with a warning.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from manager.cli.client import Client, UploadFile, quote_segment
from manager.cli.connection import CLIError, connection_from_args, connection_parent
from manager.cli.output import print_json, print_table


def human_size(size: float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _walk_directory(root: str, warnings: list[str]) -> list[UploadFile]:
    found: list[UploadFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        kept = []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                warnings.append(f"skipping {full}: symlink to a directory")
            else:
                kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                info = os.stat(full)  # follows symlinks
            except OSError as exc:
                warnings.append(f"skipping {full}: {'dangling symlink' if os.path.islink(full) else exc}")
                continue
            if not stat.S_ISREG(info.st_mode):
                warnings.append(f"skipping {full}: not a regular file")
                continue
            dest = os.path.relpath(full, root).replace(os.sep, "/")
            found.append(UploadFile(full, dest, info.st_size))
    return found


def plan_upload(paths: list[str]) -> tuple[list[UploadFile], list[str]]:
    """The files to send (source, destination relative to the folder, size) and the warnings to show."""
    files: list[UploadFile] = []
    warnings: list[str] = []
    for path in paths:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise CLIError(f"{path}: no such file or directory") from None
        except OSError as exc:
            raise CLIError(f"{path}: {exc.strerror or exc}") from None
        if stat.S_ISDIR(info.st_mode):
            files.extend(_walk_directory(path, warnings))
        elif stat.S_ISREG(info.st_mode):
            files.append(UploadFile(path, os.path.basename(os.path.normpath(path)), info.st_size))
        else:
            raise CLIError(f"{path}: not a regular file or directory")
    seen: dict[str, str] = {}
    for item in files:
        if item.dest in seen:
            raise CLIError(f"both {seen[item.dest]} and {item.source} would upload to {item.dest!r}")
        seen[item.dest] = item.source
    return files, warnings


def cmd_create(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    folder = client.post("/folders", {"name": args.name, "usage_mode": "model"})
    if args.json:
        print_json(folder)
        return 0
    print(f"Created model folder {folder.get('name', args.name)!s} (id {folder.get('id')})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = Client(connection_from_args(args))
    folders = client.get("/folders") or []
    if args.json:
        print_json(folders)
        return 0
    if not folders:
        print("No folders.")
        return 0
    print_table(["ID", "NAME", "USAGE MODE"],
                [[f.get("id"), f.get("name"), f.get("usage_mode")] for f in folders])
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    files, warnings = plan_upload(args.paths)
    for message in warnings:
        _warn(message)
    if not files:
        raise CLIError("nothing to upload")
    client = Client(connection_from_args(args))
    result = client.upload(f"/folders/{quote_segment(args.name)}/files", files)
    if args.json:
        print_json(result)
        return 0
    uploaded = (result or {}).get("files") or [{"path": f.dest, "size": f.size} for f in files]
    for item in uploaded:
        print(f"  {item.get('path')}  ({human_size(item.get('size'))})")
    total = sum(int(item.get("size") or 0) for item in uploaded)
    print(f"Uploaded {len(uploaded)} file{'s' if len(uploaded) != 1 else ''} ({human_size(total)}) "
          f"to folder {args.name}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = connection_parent()
    folder = subparsers.add_parser("folder", help="manage model folders", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = folder.add_subparsers(dest="folder_command", metavar="COMMAND", required=True)

    create = sub.add_parser("create", parents=[common], help="create a model folder")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", aliases=["ls"], parents=[common], help="list folders")
    listing.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    listing.set_defaults(func=cmd_list)

    upload = sub.add_parser(
        "upload", parents=[common], help="upload files or directory contents into a folder",
        description="Upload files into a model folder. A file lands at the folder root under its basename; "
                    "a directory uploads its contents at the folder root, keeping relative paths.",
    )
    upload.add_argument("name", metavar="NAME", help="folder name or id")
    upload.add_argument("paths", metavar="PATH", nargs="+")
    upload.add_argument("--json", action="store_true", help="print the manager's JSON answer")
    upload.set_defaults(func=cmd_upload)
