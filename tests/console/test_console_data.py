"""The console's Data / model folders screens, definition editor and Model Store in Chromium against a real
`moorage up` (docs/console.md): create a model folder, upload a directory with nested files (picker) and single
files in chunks, browse with breadcrumbs, rename, delete, new folder, download; the editor shows a schema error
by line and field, then saves the fixed file; the Model Store's card and Run this model landing on the detail
page of a service that turns HEALTHY."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.console.conftest import ECHO, Console, login_with_keys, shot

pytestmark = pytest.mark.e2e
HEALTHY_TIMEOUT = 90_000  # ms, as in test_console_flows.py
FOLDER = "store-echo"
BROKEN_DEF = """models:
  - name: echo
    model_path: /models
    service:
      start_command: python3 /models/echo_server.py --port {port}
      port: not-a-port
"""
BIG = bytes(range(256)) * 4096 * 9  # 9 MiB: over files.max_chunk_bytes (8 MiB), so sent in two chunks
SERVICE_DEF = """[resource_slots]
cpu = "0.5"
mem = "256m"
"""


def _open_folder(page: Any, console: Console) -> None:
    login_with_keys(page, console)
    page.get_by_role("link", name="Data").click()
    page.get_by_role("heading", name="Data / model folders").wait_for()
    page.locator(f"tr[data-folder='{FOLDER}']").get_by_role("link", name=FOLDER).click()
    page.get_by_role("heading", name=FOLDER).wait_for()


def test_create_folder_and_upload_a_directory_with_nested_files(console: Console, page: Any, tmp_path: Path,
                                                                same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    page.get_by_role("link", name="Data").click()
    page.get_by_role("heading", name="Data / model folders").wait_for()
    page.locator("tr[data-folder='echo']").wait_for()  # the fixture's model folder, listed by usage mode
    page.get_by_role("button", name="Create folder").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Folder name").fill("bad name!")
    dialog.get_by_label("Usage mode").select_option("model")
    dialog.get_by_role("button", name="Create").click()
    dialog.locator(".field-error").wait_for()  # the server's rule, shown under the field
    dialog.get_by_label("Folder name").fill(FOLDER)
    dialog.get_by_role("button", name="Create").click()
    page.locator(f"tr[data-folder='{FOLDER}']").wait_for()
    shot(page, "20-folders")
    page.locator(f"tr[data-folder='{FOLDER}']").get_by_role("link", name=FOLDER).click()
    page.get_by_role("heading", name=FOLDER).wait_for()

    # a whole directory through the picker: nested files keep their relative paths
    tree = tmp_path / "bundle"
    (tree / "docs" / "deep" / "deeper").mkdir(parents=True)
    (tree / "docs" / "a.txt").write_text("alpha\n")
    (tree / "docs" / "deep" / "b.txt").write_text("bravo\n")
    (tree / "docs" / "deep" / "deeper" / "c.bin").write_bytes(BIG)  # two chunks of the upload API
    (tree / "top.txt").write_text("top\n")
    page.get_by_label("Folder to upload").set_input_files(str(tree))
    page.get_by_role("status").filter(has_text="Upload finished: 4 of 4 files").wait_for()
    assert not page.locator(".upload-progress .field-error").count()
    page.locator("tr[data-entry='bundle']").get_by_role("link").click()
    page.locator("tr[data-entry='docs']").get_by_role("link").click()
    page.locator("tr[data-entry='deep']").get_by_role("link").click()
    page.locator("tr[data-entry='b.txt']").wait_for()
    page.locator("tr[data-entry='deeper']").get_by_role("link").click()
    assert "9.0 MB" in page.locator("tr[data-entry='c.bin']").inner_text()
    breadcrumbs = page.get_by_role("navigation", name="Breadcrumbs")
    assert breadcrumbs.inner_text().split() == ["Folders", "/", FOLDER, "/", "bundle", "/", "docs", "/", "deep",
                                                "/", "deeper"]
    stored = console.data_dir / "storage"
    found = list(stored.rglob("c.bin"))
    assert len(found) == 1 and found[0].as_posix().endswith("/bundle/docs/deep/deeper/c.bin"), found
    assert found[0].read_bytes() == BIG

    # back to the root by the breadcrumb; single files (the model's server) in chunks
    breadcrumbs.get_by_role("link", name=FOLDER).click()
    page.get_by_label("Files to upload").set_input_files([str(ECHO / "echo_server.py")])
    page.get_by_role("status").filter(has_text="Upload finished: 1 of 1 files").wait_for()
    page.locator("tr[data-entry='echo_server.py']").wait_for()
    shot(page, "21-folder-explorer")

    # drag-and-drop onto the table: dropped files go through the same uploads
    page.evaluate("""() => {
      const dt = new DataTransfer();
      dt.items.add(new File(["dropped one\\n"], "drop-1.txt"));
      dt.items.add(new File(["dropped two\\n"], "drop-2.txt"));
      document.querySelector(".dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    }""")
    page.get_by_role("status").filter(has_text="Upload finished: 2 of 2 files").wait_for()
    page.locator("tr[data-entry='drop-2.txt']").wait_for()
    assert sorted(p.read_text() for p in stored.rglob("drop-*.txt")) == ["dropped one\n", "dropped two\n"]

    # download: the same bytes
    row = page.locator("tr[data-entry='echo_server.py']")
    with page.expect_download() as info:
        row.get_by_role("link", name="Download echo_server.py").click()
    assert Path(info.value.path()).read_bytes() == (ECHO / "echo_server.py").read_bytes()

    # new folder, rename, delete
    page.get_by_role("button", name="New folder").click()
    page.get_by_role("dialog").get_by_label("Directory name").fill("scratch")
    page.get_by_role("dialog").get_by_role("button", name="Create").click()
    page.locator("tr[data-entry='scratch']").wait_for()
    page.locator("tr[data-entry='scratch']").get_by_role("button", name="Rename scratch").click()
    page.get_by_role("dialog").get_by_label("New name").fill("renamed")
    page.get_by_role("dialog").get_by_role("button", name="Rename").click()
    page.locator("tr[data-entry='renamed']").wait_for()
    page.locator("tr[data-entry='bundle']").get_by_role("button", name="Delete bundle").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    page.locator("tr[data-entry='bundle']").wait_for(state="detached")
    assert not list(stored.rglob("c.bin"))


def test_editor_shows_errors_by_line_then_saves_the_fixed_file(console: Console, page: Any,
                                                               same_origin_only: list[str]) -> None:
    _open_folder(page, console)
    page.get_by_role("link", name="Create model-definition.yaml").click()
    page.get_by_role("heading", name="Edit model-definition.yaml").wait_for()
    text = page.get_by_label("Contents of model-definition.yaml")
    text.fill(BROKEN_DEF)
    error = page.locator(".def-errors li").filter(has_text="models.0.service.port")
    error.wait_for()
    assert "Line 6" in error.inner_text(), error.inner_text()
    assert page.locator(".gutter .err").inner_text().strip() == "6"
    shot(page, "22-definition-editor")
    # Save while broken: the server refuses it and says why, nothing is written
    page.get_by_role("button", name="Save").click()
    page.locator(".error-box").filter(has_text="model-definition").wait_for()
    text.fill((ECHO / "model-definition.yaml").read_text())
    page.get_by_text("No errors: the model definition is valid.").wait_for()
    page.get_by_role("button", name="Save").click()
    page.get_by_role("status").filter(has_text="Saved.").wait_for()
    page.get_by_role("link", name="Back to the folder").click()
    page.get_by_role("link", name="Create service-definition.toml").click()
    page.get_by_label("Contents of service-definition.toml").fill("[resource_slots]\ncpu = \"many\"\n")
    page.locator(".def-errors li").filter(has_text="Line 2").wait_for()
    page.get_by_label("Contents of service-definition.toml").fill(SERVICE_DEF)
    page.get_by_text("No errors: the service definition is valid.").wait_for()
    page.get_by_role("button", name="Save").click()
    page.get_by_role("status").filter(has_text="Saved.").wait_for()
    saved = [p for p in (console.data_dir / "storage").rglob("service-definition.toml")]
    assert [p.read_text() for p in saved] == [SERVICE_DEF]


def test_model_store_run_this_model_lands_on_the_detail_page(console: Console, page: Any,
                                                             same_origin_only: list[str]) -> None:
    login_with_keys(page, console)
    page.get_by_role("link", name="Model Store").click()
    card = page.locator(f"article[data-folder='{FOLDER}']")
    card.wait_for()
    assert page.locator("article[data-folder='echo']").count() == 0  # no service-definition.toml: not in the store
    assert "Echo (control-plane test fixture)" in card.inner_text() and "0.5" in card.inner_text()
    shot(page, "23-model-store")
    card.get_by_role("button", name="Run this model").click()
    page.get_by_role("heading", name=FOLDER).wait_for()
    assert "#/services/" in page.url
    page.locator(".info .badge").filter(has_text="HEALTHY").wait_for(timeout=HEALTHY_TIMEOUT)
    assert console.cli_json("service", "info", FOLDER)["status"] == "HEALTHY"


def test_phone_width_explorer_editor_and_store(console: Console, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        _open_folder(page, console)
        page.locator("tr[data-entry='echo_server.py']").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # no sideways scrolling
        shot(page, "26-folder-explorer-phone")
        page.locator("tr[data-entry='model-definition.yaml']").get_by_role("link", name="Edit").click()
        page.get_by_text("No errors: the model definition is valid.").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
        page.get_by_role("link", name="Model Store").click()
        page.locator(f"article[data-folder='{FOLDER}']").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    finally:
        context.close()
