"""The console API's pure parts without I/O: where definition errors are in the text, Model Store names and
variants, conversation exports and bounds, download headers."""

from __future__ import annotations

import pytest

from common.definitions import parse_service_definition
from common.errors import InvalidAPIParameters, PayloadTooLarge
from manager.api.folder_files import content_disposition
from manager.config import ConversationsSection
from manager.conversations import check_messages, check_stored_size, export_filename, to_markdown
from manager.definition_check import (
    DefinitionKind,
    DefinitionProblem,
    check_definition,
    kind_of,
    toml_key_lines,
    yaml_field_line,
)
from manager.model_store import pick_variant, service_name_for


def test_kind_of_by_file_name() -> None:
    assert kind_of("model-definition.yaml") == DefinitionKind.MODEL
    assert kind_of("sub/model-definition.yml") == DefinitionKind.MODEL
    assert kind_of("service-definition.toml") == DefinitionKind.SERVICE
    assert kind_of("model-definition.yaml.bak") is None


def test_yaml_lines_follow_the_field_path() -> None:
    text = "models:\n  - name: a\n    model_path: /m\n  - name: b\n    model_path: rel\n    service:\n      port: 1\n"
    assert yaml_field_line(text, "models.1.model_path") == 5
    assert yaml_field_line(text, "models.1.service.port") == 7
    assert yaml_field_line(text, "models.1.service.missing") == 6  # the nearest key that exists
    assert yaml_field_line(text, "nothing") is None
    assert yaml_field_line("models: [\n", "models") is None


def test_toml_key_lines_tables_dotted_keys_and_multiline_strings() -> None:
    text = ('title = "x"\nnotes = """\n[not_a_table]\nport = 1\n"""\n[vllm]\nenvironment.image = "i"\n'
            '[vllm.resource_slots]\n"cpu" = 2\n')
    lines = toml_key_lines(text)
    assert lines[("title",)] == 1 and lines[("notes",)] == 2
    assert ("not_a_table",) not in lines and ("port",) not in lines
    assert lines[("vllm",)] == 6 and lines[("vllm", "environment", "image")] == 7
    assert lines[("vllm", "resource_slots", "cpu")] == 9


def test_check_definition_reports_every_kind_of_error_with_a_line() -> None:
    assert check_definition(DefinitionKind.MODEL, "models:\n  - name: x\n    model_path: /m\n") == [
        DefinitionProblem("models", "no model defines a 'service' section", 1)]
    [syntax] = check_definition(DefinitionKind.MODEL, "models:\n  - name: [\n")
    assert syntax.field == "(yaml)" and syntax.line == 3
    [extra] = check_definition(DefinitionKind.SERVICE, "[environment]\nimage = 'x'\nflavour = 1\n")
    assert extra.field == "environment.flavour" and extra.line == 3
    assert check_definition(DefinitionKind.SERVICE, "[environment]\nimage = 'x'\n") == []
    [slot] = check_definition(DefinitionKind.SERVICE, "[resource_slots]\ncpu = 'abc'\n")
    assert slot == DefinitionProblem("resource_slots.cpu", "must be a number", 2)


def test_service_names_from_folder_names() -> None:
    assert service_name_for("llama-3", set(), 4, 24) == "llama-3"
    assert service_name_for("llama-3", {"llama-3"}, 4, 24) == "llama-3-2"
    assert service_name_for("a b.c", set(), 4, 24) == "a-b-c"
    assert service_name_for("ab", set(), 4, 24) == "ab-svc"
    long = service_name_for("x" * 64, set(), 4, 24)
    assert long is not None and len(long) <= 21
    assert service_name_for("name", {"name"} | {f"name-{i}" for i in range(2, 100)}, 4, 24) is None


def test_pick_variant() -> None:
    assert pick_variant(None) == "custom"
    assert pick_variant(parse_service_definition("[environment]\nimage = 'x'\n")) == "custom"
    assert pick_variant(parse_service_definition("[llamacpp]\nenviron = {A = '1'}\n")) == "llamacpp"
    assert pick_variant(parse_service_definition("[unknown-thing]\nenviron = {}\n")) == "custom"


def test_markdown_export() -> None:
    text = to_markdown({"title": "A\nB", "created_at": "c", "updated_at": "u",
                        "models": [{"service_id": "s1", "base_url": None, "model": "m"}],
                        "parameters": {"system_prompt": None, "temperature": 0, "top_p": None, "max_tokens": 9},
                        "messages": [{"role": "user", "content": "q"},
                                     {"role": "assistant", "content": "a", "model_index": 0,
                                      "stats": {"ttft_ms": 12.5, "tokens_per_second": 3.14159, "tokens": 4}}]})
    assert text.startswith("# A B\n")
    assert "- Model 1: service s1, model m\n" in text and "- temperature: 0\n" in text and "top_p" not in text
    assert "## Assistant (model 1 · TTFT 12.5 ms · 3.1 tokens/s)\n\na\n" in text
    assert "System prompt" not in text


def test_export_file_names_are_plain() -> None:
    assert export_filename("Chat: about <script>", "md") == "Chat-about-script.md"
    assert export_filename("...", "json") == "conversation.json"


def test_content_disposition_cannot_inject_headers() -> None:
    header = content_disposition('evil"\r\nSet-Cookie: x=1.bin')
    assert "\r" not in header and "\n" not in header and header.count('"') == 2
    assert header.startswith('attachment; filename="evil___Set-Cookie_ x_1.bin"')
    assert "filename*=UTF-8''evil%22%0D%0ASet-Cookie%3A%20x%3D1.bin" in header
    assert content_disposition("모델.bin").startswith('attachment; filename="__.bin"')


def test_conversation_bounds() -> None:
    limits = ConversationsSection(max_messages=2, max_content_chars=3, max_conversation_bytes=1024)
    check_messages([{"content": "abc"}, {"content": ""}], limits)
    with pytest.raises(InvalidAPIParameters, match="messages.1.content"):
        check_messages([{"content": "abc"}, {"content": "abcd"}], limits)
    with pytest.raises(InvalidAPIParameters, match="at most 2"):
        check_messages([{"content": ""}] * 3, limits, "append")
    with pytest.raises(PayloadTooLarge, match="max_conversation_bytes"):
        check_stored_size([], {}, [{"content": "x" * 2000}], limits)


def test_every_console_route_is_in_openapi() -> None:
    from aiohttp.web import RouteDef

    from manager.api import conversations, folder_files, model_store
    from manager.api.openapi import build_spec

    paths = build_spec()["paths"]
    defs = [r for table in (folder_files.routes, model_store.routes, conversations.routes) for r in table
            if isinstance(r, RouteDef)]
    assert len(defs) == 19
    for route in defs:
        assert route.method.lower() in paths.get(route.path, {}), (route.method, route.path)
