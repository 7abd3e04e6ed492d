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
from agent.runtime.bwrap import Bind, Identity, SandboxSpec, bwrap_argv, mask_args, root_args
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
            if not isinstance(node, dict) or part not in node:
                raise FileNotFoundError(path)
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
    "bin": ("link", "usr/bin"), "usr": {"bin": {}}, "etc": {"shadow": None, "ssh": {}, "passwd": None},
    "dev": {}, "proc": {}, "tmp": {"ci": {".venv": {}}},
    "home": {"alice": {}, "bob": {}}, "work": {"main": {".venv": {}}, "notes.txt": None},
    "srv": {"state": {"kernels": {}}, "storage": {}, "other": {}}, "models": None,
})


def _triples(args: list[str]) -> list[tuple[str, ...]]:
    return [tuple(args[i:i + 3]) for i in range(0, len(args), 3)]


def test_root_args_bind_only_the_system_allow_list() -> None:
    pairs = _triples(root_args(lstat=FS.lstat, readlink=FS.readlink))
    assert ("--symlink", "usr/bin", "/bin") in pairs
    assert ("--ro-bind", "/usr", "/usr") in pairs and ("--ro-bind", "/etc", "/etc") in pairs
    # nothing else of the host: no home dirs, no checkout, no state or storage, no fresh mounts
    assert {p[2] for p in pairs} == {"/bin", "/usr", "/etc"}


def test_masks_cover_host_secrets_and_hidden_paths_under_bound_roots() -> None:
    flat = " ".join(mask_args(["/etc", "/work/main"], ["/work/main/.venv", "/srv/state"], lstat=FS.lstat))
    assert "--ro-bind /dev/null /etc/shadow" in flat and "--tmpfs /etc/ssh" in flat
    assert "--tmpfs /work/main/.venv" in flat
    assert "/srv/state" not in flat and "/etc/passwd" not in flat  # not under a bound root / not secret


def test_bwrap_argv_order_and_flags() -> None:
    spec = SandboxSpec(binds=[Bind("/host/work", "/home/work", True), Bind("/host/model", "/models")],
                       chdir="/home/work", command=["python3", "launcher.py", "spec.json"], hidden=["/srv/state"],
                       software=["/tmp/ci/.venv", "/usr/lib/python3"], identity=Identity(3000001, 3000001),
                       passwd_file="/k/passwd", group_file="/k/group")
    argv = bwrap_argv("/usr/bin/bwrap", spec, lstat=FS.lstat, readlink=FS.readlink)
    assert argv[:3] == ["/usr/bin/bwrap", "--tmpfs", "/"]
    text = " ".join(argv)
    assert "--ro-bind /host/model /models" in text and "--bind /host/work /home/work" in text
    # a venv under /tmp is bound after the private /tmp (else it would be hidden); system software is not
    assert text.index("--tmpfs /tmp") < text.index("--ro-bind /tmp/ci/.venv") < text.index("--remount-ro /")
    assert "/usr/lib/python3 /usr/lib/python3" not in text
    assert "--perms 0755 --dir /home" in text and "--perms 0755 --dir /tmp/ci" in text
    assert "--ro-bind /k/passwd /etc/passwd" in text and "--ro-bind /dev/null /etc/shadow" in text
    for flag in ("--unshare-pid", "--unshare-net", "--unshare-ipc", "--cap-drop"):
        assert flag in argv
    assert "--die-with-parent" not in argv and "--new-session" not in argv and "--unshare-user" not in argv
    # the first command inside drops to the replica's own uid, without groups or new privileges
    i = argv.index("--")
    assert argv[i + 1:i + 3] == ["/usr/bin/setpriv", "--reuid=3000001"] and "--clear-groups" in argv[i:]
    assert "--nnp" in argv[i:] and argv[-3:] == ["python3", "launcher.py", "spec.json"]


def test_bwrap_argv_without_root_uses_a_user_namespace_and_may_share_the_network() -> None:
    spec = SandboxSpec(binds=[], chdir="/", command=["sh"], isolate_network=False)
    argv = bwrap_argv("bwrap", spec, lstat=FS.lstat, readlink=FS.readlink)
    assert "--unshare-user" in argv and "--unshare-net" not in argv and "/usr/bin/setpriv" not in argv


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



def test_software_roots_are_venvs_and_real_interpreter_prefixes() -> None:
    """The venv (wherever it is, /tmp included) and the prefix of the interpreter its python links to are
    bound; paths inside the system allow-list need nothing."""
    import shutil
    import tempfile
    from pathlib import Path

    from agent.runtime.local import software_roots

    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        venv, prefix = base / "venv", base / "pyenv" / "3.11"
        (venv / "bin").mkdir(parents=True)
        (prefix / "bin").mkdir(parents=True)
        (prefix / "bin" / "python3.11").write_text("")
        (venv / "bin" / "python3").symlink_to(prefix / "bin" / "python3.11")
        roots = software_roots([str(venv / "bin" / "python3"), str(venv / "bin"), "/usr/bin"])
        assert roots == sorted([str(prefix), str(venv)])
    finally:
        shutil.rmtree(base)


def test_image_command_for_definitions_without_start_command() -> None:
    from agent.runtime.docker import image_command

    assert image_command({"Entrypoint": ["/bin/tini", "--"], "Cmd": ["python3", "-m", "x y"]}) == \
        "/bin/tini -- python3 -m 'x y'"
    assert image_command({"Entrypoint": None, "Cmd": ["python3"]}) == "python3"
    assert image_command({}) is None


def test_pasta_forwards_one_port_and_opens_the_network_only_when_asked() -> None:
    from agent.runtime.netfwd import pasta_argv

    argv = pasta_argv("pasta", "/proc/9/ns/net", "127.0.0.1", 30001, "/k/netfwd.pid", run_as_root=True)
    assert argv[:4] == ["pasta", "--netns", "/proc/9/ns/net", "--netns-only"] and "--runas" in argv
    assert "127.0.0.1/30001" in argv and "--no-map-gw" in argv
    for flag in ("-T", "-U", "-u"):  # nothing forwarded from the namespace to the host, no UDP
        assert argv[argv.index(flag) + 1] == "none"
    assert "--config-net" not in argv  # loopback proxy: no interface, no route, no way out
    assert "--config-net" in pasta_argv("pasta", "n", "127.0.0.1", 1, "p", run_as_root=True, outbound=True)
    assert "--config-net" in pasta_argv("pasta", "n", "10.0.0.5", 1, "p", run_as_root=True)
    userns = pasta_argv("pasta", "n", "::1", 1, "p", run_as_root=False, userns="/proc/9/ns/user")
    assert "--userns" in userns and "--netns-only" not in userns and "--runas" not in userns
    assert "[::1]/1" in userns


def test_uid_pool_gives_each_live_replica_its_own_uid() -> None:
    from agent.runtime.base import RuntimeUnavailable
    from agent.runtime.uids import UidPool

    pool = UidPool(3_000_000, 3)
    pool.hold(3_000_001)  # re-adopted after an agent restart
    assert [pool.take(), pool.take()] == [3_000_000, 3_000_002]
    with pytest.raises(RuntimeUnavailable):
        pool.take()
    pool.release(3_000_001)
    pool.release(None)
    assert pool.take() == 3_000_001


def test_gpu_device_nodes_only_for_replicas_given_gpus() -> None:
    from agent.runtime.local import gpu_device_binds

    nodes = ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-caps"]
    assert gpu_device_binds([], found=nodes) == []
    binds = gpu_device_binds(["GPU-1"], found=nodes)
    assert [b.dest for b in binds] == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    assert all(b.device for b in binds)
    argv = bwrap_argv("bwrap", SandboxSpec(binds=binds, chdir="/", command=["sh"]), lstat=FS.lstat,
                      readlink=FS.readlink)
    assert " ".join(argv).count("--dev-bind /dev/nvidia") == 4
