"""Schema tests: valid and invalid model and service definitions; errors must name the field."""

from __future__ import annotations

import pytest

from common.definitions import DefinitionError, parse_model_definition, parse_service_definition

FULL = """
models:
  - name: llama
    model_path: /models/llama
    service:
      pre_start_actions:
        - action: write_file
          args: {filename: /work/a.txt, body: ["x"]}
        - action: write_tempfile
          args: {body: ["print(1)"]}
          ref: script
      command: ["python3", "-m", "server", "--port", "{port}"]
      shell: null
      port: 8000
      health_check:
        path: /v1/models
        interval: 5
        max_retries: 3
        max_wait_time: 2
        expected_status_code: 204
        initial_delay: 30
    metadata:
      author: me
      created_at: "2024-01-01"
      modified_at: "2024-02-01"
      framework: [vllm]
      min_resource: {cuda.shares: 1}
"""


def test_full_definition_with_aliases_and_defaults() -> None:
    d = parse_model_definition(FULL)
    model = d.serving_model()
    assert model.service is not None
    assert model.service.start_command == "python3 -m server --port {port}"
    assert model.service.shell is None
    assert model.service.argv("a b") == ["a", "b"]
    assert model.service.pre_start_actions[1].ref == "script"
    hc = d.health_check()
    assert hc is not None and hc.expected_status_code == 204 and hc.enable
    assert model.metadata is not None and model.metadata.created == "2024-01-01"
    assert model.metadata.last_modified == "2024-02-01"


def test_health_check_defaults() -> None:
    d = parse_model_definition("models: [{name: a, model_path: /m, service: {port: 9000, start-command: x,"
                               " health_check: {}}}]")
    hc = d.health_check()
    assert hc is not None
    assert (hc.path, hc.interval, hc.max_retries, hc.max_wait_time, hc.expected_status_code, hc.initial_delay) == (
        "/health", 10.0, 10, 15.0, 200, 60.0)
    assert d.models[0].service and d.models[0].service.shell == "/bin/bash"


def test_disabled_health_check_is_not_used() -> None:
    d = parse_model_definition("models: [{name: a, model_path: /m, service: {port: 9000, command: x,"
                               " health_check: {enable: false}}}]")
    assert d.health_check() is None


@pytest.mark.parametrize("text, field", [
    ("models: [{name: a, model_path: /m, service: {port: 1}}]", "models.0.service.port"),
    ("models: [{name: a, model_path: /m, service: {port: 2000}}]", "models.0.service.port"),
    ("models: [{name: a, model_path: relative, service: {port: 8000}}]", "models.0.model_path"),
    ("models: [{model_path: /m}]", "models.0.name"),
    ("models: [{name: a, model_path: /m, service: {port: 8000, health_check: {interval: -1}}}]",
     "models.0.service.health_check.interval"),
    ("models: [{name: a, model_path: /m, service: {port: 8000, pre_start_actions: [{action: rm_rf}]}}]",
     "models.0.service.pre_start_actions.0.action"),
    ("models: [{name: a, model_path: /m, service: {port: 8000, bogus: 1}}]", "models.0.service.bogus"),
    ("models: {name: a}", "models"),
    ("models: [{name: a, model_path: /m, service: {port: 8000, health_check: {expected_status_code: 42}}}]",
     "models.0.service.health_check.expected_status_code"),
])
def test_invalid_definitions_name_the_field(text: str, field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_model_definition(text)
    assert field in str(info.value)
    assert any(e["field"] == field for e in info.value.errors)


def test_invalid_yaml_names_the_position() -> None:
    with pytest.raises(DefinitionError, match="invalid YAML at line"):
        parse_model_definition("models:\n  - name: [unclosed\n")


def test_definition_without_service_is_rejected_when_serving() -> None:
    d = parse_model_definition("models: [{name: a, model_path: /m}]")
    with pytest.raises(DefinitionError, match="service"):
        d.serving_model()


SERVICE_TOML = """
[environment]
image = "python:3.11"
architecture = "x86_64"

[resource_slots]
cpu = 2
mem = "4g"

[environ]
A = "root"
B = "root"

[vllm.environment]
image = "vllm:latest"

[vllm.resource_slots]
"cuda.shares" = 1.5

[vllm.environ]
B = "variant"
"""


def test_service_definition_merge_order() -> None:
    sd = parse_service_definition(SERVICE_TOML)
    custom = sd.resolve("custom")
    assert custom.image == "python:3.11" and custom.environ == {"A": "root", "B": "root"}
    vllm = sd.resolve("vllm")
    assert vllm.image == "vllm:latest"
    assert vllm.resource_slots == {"cpu": 2, "mem": "4g", "cuda.shares": 1.5}
    assert vllm.environ == {"A": "root", "B": "variant"}
    final = vllm.apply_request(image=None, architecture=None, resources={"cpu": 4}, resource_opts=None,
                               environ={"A": "request"})
    assert final.resource_slots["cpu"] == 4 and final.environ["A"] == "request" and final.image == "vllm:latest"


@pytest.mark.parametrize("text, field", [
    ("[environment]\nimage = 3\n", "environment.image"),
    ("[resource_slots]\nmem = \"lots\"\n", "resource_slots"),
    ("[vllm.environment]\nbogus = 1\n", "vllm.environment.bogus"),
    ("vllm = 3\n", "vllm"),
    ("[environment\n", "(toml)"),
])
def test_invalid_service_definitions_name_the_field(text: str, field: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_service_definition(text)
    assert field in str(info.value) or any(e["field"] == field for e in info.value.errors)
