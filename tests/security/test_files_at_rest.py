"""Files at rest: a real ``moorage up --detach`` leaves nothing in its data dir that another local user can read.

The data dir is 0700 and every file in it 0600 (database and its WAL/SHM, cluster.json, secrets.json, the log),
except inside ``storage/`` where model folders stay 0755/0644 for the replicas (the sandbox binds the folder path
itself). An existing data dir with loose modes is tightened at start, and the change is reported. Reads are tried
as ``nobody`` with setpriv (CI runs as root).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import PYTHON, REPO, free_port_block
from tests.services import free_port

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _loose_umask() -> None:  # the common default; the daemons must not depend on the caller's umask
    os.umask(0o022)


def _moorage(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "manager.cli.main", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False, preexec_fn=_loose_umask)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *cmd], capture_output=True, text=True, timeout=10, check=False)


@pytest.fixture
def parent_dir() -> Iterator[Path]:
    """A directory outside /tmp that other users may traverse, like ``~/.local/share`` (the default's parent)."""
    path = Path(tempfile.mkdtemp(prefix="moorage-sec-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_moorage_up_detach_leaves_nothing_readable_by_others(parent_dir: Path) -> None:
    data_dir = parent_dir / "moorage"
    # An install from before the fix: a 0755 data dir with a world-readable secrets.json and log.
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "secrets.json").write_text(json.dumps({"cluster_secret": "c" * 43, "jwt_secret": "j" * 43}))
    (data_dir / "secrets.json").chmod(0o644)
    (data_dir / "moorage.log").write_text("old log line\n")
    (data_dir / "moorage.log").chmod(0o644)
    control = parent_dir / "control.txt"  # proves that `nobody` can read what others may read
    control.write_text("readable\n")
    control.chmod(0o644)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env["MOORAGE_DATA_DIR"] = str(data_dir)
    port, proxy_base = free_port(), free_port_block(3)
    up = _moorage(env, "up", "--detach", "--port", str(port),
                  "--console-port", str(free_port()), "--proxy-ports", f"{proxy_base}-{proxy_base + 2}",
                  "--wait", "60")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # the model folder path: the manager writes it, the replicas (another uid, later) read it
        model = parent_dir / "model.txt"
        model.write_text("weights\n")
        created = _moorage(env, "folder", "create", "m1")
        assert created.returncode == 0, created.stdout + created.stderr
        uploaded = _moorage(env, "folder", "upload", "m1", str(model))
        assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr

        assert _mode(data_dir) == 0o700, oct(_mode(data_dir))
        storage = data_dir / "storage"
        loose: list[str] = []
        for path in sorted(data_dir.rglob("*")):
            mode = _mode(path)
            if path == storage or storage in path.parents:
                want = 0o755 if path.is_dir() else 0o644
                if mode != want:
                    loose.append(f"{path.relative_to(data_dir)}: {oct(mode)} (want {oct(want)})")
            elif mode & 0o077:
                loose.append(f"{path.relative_to(data_dir)}: {oct(mode)} (want no group/other bits)")
        assert not loose, loose
        for name in ("moorage.db", "cluster.json", "secrets.json", "moorage.log"):
            assert _mode(data_dir / name) == 0o600, (name, oct(_mode(data_dir / name)))
        assert any(storage.rglob("model.txt")), "the upload landed somewhere else"

        assert _as_nobody("cat", str(control)).returncode == 0
        for name in ("moorage.db", "cluster.json", "secrets.json"):
            result = _as_nobody("cat", str(data_dir / name))
            assert result.returncode != 0 and "Permission denied" in result.stderr, (name, result)
        listing = _as_nobody("ls", str(data_dir))
        assert listing.returncode != 0, listing

        # the tightening was reported (the detached child logs to moorage.log; `up` itself prints to stderr)
        report = up.stderr + (data_dir / "moorage.log").read_text(errors="replace")
        assert "0755 -> 0700" in report and "secrets.json" in report, report[-3000:]
    finally:
        down = _moorage(env, "down", "--wait", "30")
        with contextlib.suppress(Exception):
            print(down.stdout, down.stderr, (data_dir / "moorage.log").read_text(errors="replace")[-3000:])


# -- secret files: only their owner may read them ------------------------------------------------------------------
def _secret_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / f"secret-{mode:o}"
    path.write_text("s" * 40 + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620, 0o666], ids=oct)
def test_secret_file_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    from common.config import ConfigError, read_secret

    path = _secret_file(tmp_path, mode)
    with pytest.raises(ConfigError) as err:
        read_secret(None, str(path), "secrets.jwt_secret")
    message = str(err.value)
    assert "secrets.jwt_secret" in message and str(path) in message and "chmod 600" in message, message


def test_group_readable_secret_file_is_accepted_with_a_warning(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from common.config import read_secret

    path = _secret_file(tmp_path, 0o640)  # root:moorage 0640 is a usual way to share one file with a service
    assert read_secret(None, str(path), "secrets.jwt_secret") == "s" * 40
    assert any(str(path) in r.getMessage() and "group" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING"), caplog.text
    caplog.clear()
    assert read_secret(None, str(_secret_file(tmp_path, 0o600)), "secrets.jwt_secret") == "s" * 40
    assert read_secret(None, str(_secret_file(tmp_path, 0o400)), "secrets.jwt_secret") == "s" * 40
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


def test_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    from common.config import ConfigError, read_secret

    with pytest.raises(ConfigError, match="secrets.cluster_secret"):
        read_secret(None, str(tmp_path / "missing"), "secrets.cluster_secret")


def test_manager_refuses_a_world_readable_secret_file(tmp_path: Path) -> None:
    jwt_file = _secret_file(tmp_path, 0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env.update({"MOORAGE_MANAGER__DB__URL": f"sqlite+aiosqlite:///{tmp_path}/m.db",
                "MOORAGE_MANAGER__MANAGER__AUTO_MIGRATE": "true",
                "MOORAGE_MANAGER__MANAGER__LISTEN_PORT": str(free_port()),
                "MOORAGE_MANAGER__CONSOLE__LISTEN_PORT": "0",  # any free port: managers share this host
                "MOORAGE_MANAGER__MANAGER__STORAGE_ROOT": str(tmp_path / "storage"),
                "MOORAGE_MANAGER__ETCD__PORT": str(free_port()),
                "MOORAGE_MANAGER__SECRETS__CLUSTER_SECRET": "c" * 32,
                "MOORAGE_MANAGER__SECRETS__KEYPAIR_ENCRYPTION_KEY": "k" * 32,
                "MOORAGE_MANAGER__SECRETS__JWT_SECRET_FILE": str(jwt_file)})
    cmd = [PYTHON, "-m", "manager.cli.main", "manager", "--config", str(REPO / "configs/manager.toml")]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the manager started with a world-readable secret file:\n{out[-2000:]}")
    assert proc.returncode == 1 and str(jwt_file) in out and "Traceback" not in out, out
