"""Pure pieces of the agent: ports, resources, config, the bwrap command line, spec checks, exit decisions."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from agent.config import AgentConfig, load_agent_config
from agent.kernels import check_mount_destination, exit_outcome, parse_definition, resolve_model_folder
from agent.ports import PortAllocator, PortsExhausted, port_is_bindable
from agent.resources import available_slots, detect_cpu_count, detect_memory_bytes
from agent.runtime.base import ReplicaPlan, host_model_path, replica_environ
from agent.runtime.bwrap import Bind, bwrap_argv, root_args
from agent.runtime.logfiles import copytruncate, tail_lines, tail_text
from common.config import ConfigError
from common.errors import InvalidAPIParameters
from common.status import KernelStatus

# -- ports ------------------------------------------------------------------------------------------------


def test_ports_skip_held_and_busy_and_rotate() -> None:
    busy = {30001}
    ports = PortAllocator((30000, 30003), is_free=lambda p: p not in busy)
    assert ports.allocate() == 30000
    assert ports.allocate() == 30002  # 30001 is in use by someone else
    ports.release(30000)
    assert ports.allocate() == 30003  # the search goes on instead of reusing the port just released
    assert ports.allocate() == 30000
    with pytest.raises(PortsExhausted):
        ports.allocate()
    ports.release(30002)
    assert ports.allocate() == 30002
    ports.reserve(30002)
    assert 30002 in ports.held


def test_port_is_bindable_sees_a_listener() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        assert not port_is_bindable(port)
        allocator = PortAllocator((port, port))
        with pytest.raises(PortsExhausted):
            allocator.allocate()
    finally:
        sock.close()
    assert port_is_bindable(port)


# -- resources --------------------------------------------------------------------------------------------


def _resources(**values: object) -> AgentConfig:
    return load_agent_config(None, overrides={"resources": values}, environ={})


def test_available_slots_shape() -> None:
    slots = available_slots(_resources(reserved_mem="0").resources)
    assert set(slots) == {"cpu", "mem"}
    assert all(isinstance(v, str) for v in slots.values())
    assert int(slots["cpu"]) == detect_cpu_count() >= 1
    assert int(slots["mem"]) == detect_memory_bytes() > 64 * 1024 * 1024


def test_available_slots_reserve_and_overrides() -> None:
    slots = available_slots(_resources(cpu=4, mem="16g", reserved_cpu=1, reserved_mem="1g").resources)
    assert slots == {"cpu": "3", "mem": str(15 * 1024**3)}
    slots = available_slots(_resources(cpu=1, mem="1g", reserved_cpu=2, reserved_mem="2g").resources)
    assert slots == {"cpu": "0", "mem": "0"}
    assert available_slots(_resources(cpu=2.5, reserved_cpu=0).resources)["cpu"] == "2.5"


def test_memory_and_cpu_discovery_honour_cgroup_limits(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384 kB\nMemFree: 1 kB\n")
    assert detect_memory_bytes(meminfo, tmp_path / "nocgroup") == 16384 * 1024
    (tmp_path / "memory.max").write_text("4096\n")
    assert detect_memory_bytes(meminfo, tmp_path) == 4096
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert detect_cpu_count(tmp_path) == min(2, len(os.sched_getaffinity(0)))


# -- config -----------------------------------------------------------------------------------------------


def test_config_defaults_file_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('[agent]\nid = "gpu-1"\nlisten_host = "0.0.0.0"\nreplica_host = "10.0.0.5"\n'
                    '[secrets]\ncluster_secret_file = "%s"\n' % (tmp_path / "secret"))
    (tmp_path / "secret").write_text("s" * 32 + "\n")
    (tmp_path / "secret").chmod(0o600)
    config = load_agent_config(toml, environ={"MOORAGE_AGENT__AGENT__PORT_RANGE": "[40000, 40010]",
                                              "MOORAGE_AGENT__LOCAL__SANDBOX": "none"})
    assert config.agent.id == "gpu-1"
    assert config.agent.port_range == (40000, 40010)
    assert config.agent.rpc_url == "http://10.0.0.5:6001"  # a wildcard listen host advertises replica_host
    assert config.local.sandbox == "none"
    assert config.cluster_secret() == "s" * 32
    default = load_agent_config(None, environ={})
    assert default.agent.rpc_url == "http://127.0.0.1:6001"
    assert default.agent.heartbeat_interval == 3.0 and default.agent.port_range == (30000, 31000)
    assert default.local.extra_path and default.agent.state_dir.is_absolute()
    with pytest.raises(ConfigError):
        default.cluster_secret()


@pytest.mark.parametrize("bad", [
    {"agent": {"port_range": [31000, 30000]}},
    {"agent": {"manager_url": "ftp://x"}},
    {"agent": {"id": "has space"}},
    {"local": {"sandbox": "docker"}},
    {"local": {"work_mount": "/"}},
    {"resources": {"mem": "lots"}},
    {"agent": {"unknown_key": 1}},
])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        load_agent_config(None, overrides=bad, environ={})


# -- sandbox command line ---------------------------------------------------------------------------------


class FakeFS:
    """A tiny fake file tree for root_args: dirs are dicts, symlinks are ('link', target), files are None."""

    def __init__(self, tree: dict):
        self.tree = tree

    def _node(self, path: str):
        node = self.tree
        for part in [p for p in path.split("/") if p]:
            node = node[part]
        return node

    def listdir(self, path: str) -> list[str]:
        node = self._node(path)
        if not isinstance(node, dict):
            raise NotADirectoryError(path)
        return list(node)

    def lstat(self, path: str) -> os.stat_result:
        node = self._node(path)
        mode = stat.S_IFDIR if isinstance(node, dict) else stat.S_IFLNK if isinstance(node, tuple) else stat.S_IFREG
        return os.stat_result((mode | 0o755, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    def readlink(self, path: str) -> str:
        return self._node(path)[1]


FS = FakeFS({
    "bin": ("link", "usr/bin"), "usr": {"bin": {}}, "etc": {}, "dev": {}, "proc": {}, "tmp": {},
    "home": {"alice": {}, "bob": {}}, "work": {"main": {".venv": {}}, "notes.txt": None},
    "srv": {"state": {"kernels": {}}, "storage": {}, "other": {}}, "models": None,
})


def test_root_args_punch_through_to_mount_points_and_hide_paths() -> None:
    args = root_args(["/home/work", "/models", "/srv/state", "/srv/storage", "/tmp/ignored"],
                     listdir=FS.listdir, lstat=FS.lstat, readlink=FS.readlink)
    pairs = [tuple(args[i:i + 3]) for i in range(0, len(args), 3)]
    assert ("--symlink", "usr/bin", "/bin") in pairs
    assert ("--ro-bind", "/usr", "/usr") in pairs and ("--ro-bind", "/work", "/work") in pairs
    # /home is rebuilt so that /home/work can be created while alice and bob stay visible
    assert ("--ro-bind", "/home/alice", "/home/alice") in pairs and ("--ro-bind", "/home", "/home") not in pairs
    # hidden: the agent's state and the storage root; their sibling stays
    assert ("--ro-bind", "/srv/other", "/srv/other") in pairs
    assert not any(p[2].startswith(("/srv/state", "/srv/storage")) for p in pairs)
    # fresh mounts and the file occupying a mount point are not carried over
    assert not any(p[2] in ("/dev", "/proc", "/tmp", "/models") for p in pairs)


def test_bwrap_argv_order_and_flags() -> None:
    argv = bwrap_argv("/usr/bin/bwrap", [Bind("/host/work", "/home/work", True), Bind("/host/model", "/models")],
                      ["/srv/state"], "/home/work", ["python3", "launcher.py", "spec.json"],
                      listdir=FS.listdir, lstat=FS.lstat, readlink=FS.readlink)
    assert argv[:3] == ["/usr/bin/bwrap", "--tmpfs", "/"]
    text = " ".join(argv)
    assert "--ro-bind /host/model /models" in text and "--bind /host/work /home/work" in text
    assert text.index("--tmpfs /tmp") < text.index("--ro-bind /host/model") < text.index("--remount-ro /")
    assert "--unshare-pid" in argv and "--cap-drop" in argv
    assert "--die-with-parent" not in argv and "--new-session" not in argv
    assert argv[-4:] == ["--", "python3", "launcher.py", "spec.json"]


# -- replica environment ----------------------------------------------------------------------------------


def _plan(**fields: object) -> ReplicaPlan:
    values: dict = {"kernel_id": "k", "endpoint_id": "e", "route_id": "r", "port": 30005, "model_name": "m",
                    "model_path": "/models/sub", "mount_destination": "/models", "model_folder": Path("/s/f")}
    values.update(fields)
    return ReplicaPlan(**values)


def test_replica_environ_is_clean_and_port_wins() -> None:
    os.environ["MOORAGE_TEST_LEAK"] = "secret"
    try:
        env = replica_environ(_plan(environ={"PORT": "1", "MY": "x", "BACKEND_MODEL_NAME": "custom"}),
                              model_path="/models/sub", models_dir="/models", work_dir="/home/work",
                              extra_path=["/venv/bin"])
    finally:
        del os.environ["MOORAGE_TEST_LEAK"]
    assert "MOORAGE_TEST_LEAK" not in env
    assert env["PORT"] == "30005" and env["MY"] == "x" and env["BACKEND_MODEL_NAME"] == "custom"
    assert env["PATH"].startswith("/venv/bin:") and env["HOME"] == "/home/work"
    assert env["MOORAGE_ENDPOINT_ID"] == "e" and env["MOORAGE_ROUTE_ID"] == "r"


def test_host_model_path_translation() -> None:
    assert host_model_path("/models", "/models", Path("/s/f")) == "/s/f"
    assert host_model_path("/models/sub/x", "/models/", Path("/s/f")) == "/s/f/sub/x"
    assert host_model_path("/modelsX", "/models", Path("/s/f")) == "/modelsX"
    assert host_model_path("/opt/other", "/models", Path("/s/f")) == "/opt/other"


# -- spec checks ------------------------------------------------------------------------------------------


def test_model_folder_must_stay_inside_the_storage_root(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    (root / "ok").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    assert resolve_model_folder(root, "ok") == (root / "ok").resolve()
    for bad in ("../outside", "/etc", "", ".", "escape", "ok/../../outside"):
        with pytest.raises(InvalidAPIParameters, match="folder_relpath"):
            resolve_model_folder(root, bad)


@pytest.mark.parametrize("dest", ["/", "/usr", "/proc/x", "/dev", "/home/work", "/home", "/opt/moorage/x",
                                  "relative", "/tmp"])
def test_bad_mount_destinations(dest: str) -> None:
    with pytest.raises(InvalidAPIParameters, match="mount_destination"):
        check_mount_destination(dest, "/home/work")


def test_good_mount_destinations() -> None:
    assert check_mount_destination("/models/", "/home/work") == "/models"
    assert check_mount_destination("/data/llm", "/home/work") == "/data/llm"


def test_definition_parsing_names_fields_and_leaves_action_names_to_the_launcher() -> None:
    definition, model, actions = parse_definition({"models": [
        {"name": "a", "model_path": "/models"},
        {"name": "b", "model_path": "/models", "service": {
            "start_command": ["serve", "--port", "{port}"], "port": 8000,
            "pre_start_actions": [{"action": "not_known_yet", "args": {"x": 1}, "ref": "r"}]}},
    ]})
    assert model.name == "b" and model.service and model.service.start_command == "serve --port {port}"
    assert actions == [{"action": "not_known_yet", "args": {"x": 1}, "ref": "r"}]
    with pytest.raises(InvalidAPIParameters, match=r"model_definition\.models\.0\.service\.port"):
        parse_definition({"models": [{"name": "a", "model_path": "/m", "service": {"port": 2000}}]})
    with pytest.raises(InvalidAPIParameters, match=r"pre_start_actions\.0\.ref"):
        parse_definition({"models": [{"name": "a", "model_path": "/m", "service": {
            "port": 8000, "pre_start_actions": [{"action": "log", "ref": "bad-name"}]}}]})
    with pytest.raises(InvalidAPIParameters, match="service"):
        parse_definition({"models": [{"name": "a", "model_path": "/m"}]})


# -- exit decisions ---------------------------------------------------------------------------------------


def test_exit_outcomes() -> None:
    status, error = exit_outcome(False, 3, None, "boom\n")
    assert status == KernelStatus.FAILED and error.type == "start_failed" and error.exit_code == 3
    assert error.stderr_tail == "boom\n"
    status, error = exit_outcome(False, 86, {"type": "prestart_failed", "message": "unknown action"}, "")
    assert (status, error.type, error.message) == (KernelStatus.FAILED, "prestart_failed", "unknown action")
    status, error = exit_outcome(True, 137, None, "")
    assert status == KernelStatus.EXITED and error.type == "exited" and "SIGKILL" in error.message
    status, error = exit_outcome(True, -1, None, "")
    assert error.exit_code is None


# -- log files --------------------------------------------------------------------------------------------


def test_log_rotation_and_tails(tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with open(log, "ab") as fp:
        fp.write(b"".join(b"line %d\n" % i for i in range(1000)))
        assert copytruncate(log, 4096)
        assert not copytruncate(log, 4096)
        fp.write(b"after rotation\n")  # O_APPEND: continues at the new end
    assert log.read_bytes() == b"after rotation\n"
    assert tail_lines(log, 2) == "line 999\nafter rotation\n"
    assert tail_text(log, 9) == "rotation\n"
    assert tail_lines(tmp_path / "missing.log", 5) == ""



def test_software_under_fresh_mounts_is_bound_into_the_sandbox() -> None:
    """A venv under /tmp (a CI clone) would be hidden by the sandbox's private /tmp: it is bound read-only."""
    import shutil
    import tempfile
    from pathlib import Path

    from agent.runtime.local import software_binds

    venv = Path(tempfile.mkdtemp(dir="/tmp")) / "venv"
    try:
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python3").write_text("")
        binds = software_binds([str(venv / "bin" / "python3"), str(venv / "bin"), "/usr/bin"])
        assert [(b.source, b.dest, b.writable) for b in binds] == [(str(venv), str(venv), False)]
    finally:
        shutil.rmtree(venv.parent)


def test_image_command_for_definitions_without_start_command() -> None:
    from agent.runtime.docker import image_command

    assert image_command({"Entrypoint": ["/bin/tini", "--"], "Cmd": ["python3", "-m", "x y"]}) == \
        "/bin/tini -- python3 -m 'x y'"
    assert image_command({"Entrypoint": None, "Cmd": ["python3"]}) == "python3"
    assert image_command({}) is None
