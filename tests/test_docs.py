"""The documentation keeps up with the code: the generated reference pages are what the code
generates now, the layout in docs/architecture.md lists exactly the modules under src/lockgate,
and every relative link in the user docs leads somewhere."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "lockgate"
GENERATED_PACKAGES = {"_proto"}  # listed as one line: its modules are generated (make proto)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# 7 to 40 hex digits, letters and digits mixed; not part of a number such as 6.103515625e-05
COMMIT = re.compile(r"(?<![\w.])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b(?![-+]\d)")


@pytest.fixture(scope="module")
def gen_docs() -> Iterator[ModuleType]:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        yield importlib.import_module("gen_docs")
    finally:
        sys.path.remove(str(ROOT / "tools"))


def user_docs() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_reference_pages_are_fresh(gen_docs: ModuleType) -> None:
    pages = gen_docs.pages()
    committed = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs/reference").glob("*.md")}
    assert committed == set(pages), "docs/reference/ holds pages nobody generates: run `make docs`"
    for path, text in pages.items():
        assert (ROOT / path).read_text() == text, f"{path} is stale: run `make docs`"


def test_pages_do_not_depend_on_the_environment(
    gen_docs: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "LOCKGATE_HOME": "/srv/elsewhere",
        "LOCKGATE_HTTP": "10.1.2.3:9000",
        "LOCKGATE_WORKERS": "7",
        "LOCKGATE_REPLICA_ID": "replica-from-env",
        "LOCKGATE_ADMIN_URL": "http://admin.example:1",
    }.items():
        monkeypatch.setenv(name, value)
    for path, text in gen_docs.pages().items():
        assert (ROOT / path).read_text() == text, f"{path} changes with LOCKGATE_* variables"


def test_machine_dependent_defaults_are_not_this_machines(gen_docs: ModuleType) -> None:
    cli = (ROOT / "docs/reference/cli.md").read_text()
    rows = [line for line in cli.splitlines() if line.startswith("| `--replica-id")]
    assert rows
    assert all("machine-dependent: the host name" in row for row in rows)
    rows = [line for line in cli.splitlines() if line.startswith("| `--intra-op-threads")]
    assert rows
    assert all("machine-dependent" in row for row in rows)


def test_every_metric_family_of_a_scrape_is_documented() -> None:
    """A scrape of a snapshot built independently of the generator's exports only documented
    families."""
    from prometheus_client.parser import text_string_to_metric_families

    from lockgate.monitor.metrics import render_metrics
    from lockgate.monitor.snapshot import Snapshot

    page = (ROOT / "docs/reference/metrics.md").read_text()
    text = render_metrics(Snapshot(monitored=True, processes=1)).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) > 20
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"| `{name}` |" in page, f"{name} is exported but not in docs/reference/metrics.md"


def test_admin_api_page_follows_schema_references(gen_docs: ModuleType) -> None:
    """A document whose bodies are named, even recursive, schemas (as a typed model would emit)
    renders each schema once, linked from where it is used."""
    from docgen.openapi_page import admin_api_page

    ref = {"$ref": "#/components/schemas/Endpoint"}
    doc = {
        "openapi": "3.1.0",
        "security": [{"bearer": []}],
        "paths": {
            "/v1/endpoints/{name}": {
                "parameters": [{"$ref": "#/components/parameters/Name"}],
                "put": {
                    "summary": "Create",
                    "requestBody": {"content": {"application/json": {"schema": ref}}},
                    "responses": {"409": {"$ref": "#/components/responses/Error"}},
                },
            },
            "/healthz": {"get": {"summary": "Live", "security": []}},
        },
        "components": {
            "parameters": {"Name": {"name": "name", "in": "path", "required": True}},
            "responses": {"Error": {"description": "Error"}},
            "schemas": {
                "Endpoint": {
                    "type": "object",
                    "required": ["variants"],
                    "properties": {
                        "variants": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Variant"},
                        },
                        "parent": ref,
                    },
                },
                "Variant": {
                    "type": "object",
                    "properties": {"kind": {"enum": ["a", "b"]}, "weight": {"maximum": 100}},
                },
            },
        },
    }
    page = admin_api_page(doc)
    assert "| `variants` | array of [Variant](#variant-schema) | yes |  |" in page
    assert "| `parent` | [Endpoint](#endpoint-schema) |  |  |" in page
    assert '| `kind` | string |  | one of `"a"`, `"b"` |' in page
    assert "| `weight` | any |  | maximum `100` |" in page
    assert "| `name` | path | yes | any |  |" in page
    assert "| `409` | [Error](#error-response) |  |" in page
    assert "| [`GET /healthz`](#get-healthz) | Live | none |" in page
    assert page.count("## Endpoint (schema)") == page.count("## Variant (schema)") == 1


def test_metrics_page_refuses_a_snapshot_with_figures_missing(gen_docs: ModuleType) -> None:
    """The metrics page is built from a snapshot with every field set; one left at its default
    (a field added to Snapshot later) stops the generator instead of documenting less."""
    from docgen.metrics_page import _check_complete

    from lockgate.monitor.snapshot import Snapshot

    with pytest.raises(ValueError, match=r"Snapshot\.revision is not set"):
        _check_complete(Snapshot())


def layout_tree() -> dict[str, str]:
    """{path under src/lockgate: description} from the tree in docs/architecture.md."""
    text = (ROOT / "docs/architecture.md").read_text()
    block = re.search(r"```text\nsrc/lockgate/\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```text block starting with src/lockgate/"
    tree: dict[str, str] = {}
    parents: list[str] = []
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2 - 1
        name, _, description = line.strip().partition(" ")
        assert depth >= 0, f"docs/architecture.md layout: {line!r} is not indented"
        parents = parents[:depth]
        path = "/".join([*parents, name])
        tree[path] = description.strip()
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
    return tree


def source_tree() -> set[str]:
    """Every module and package under src/lockgate (a package's __init__ is the package; a C
    source is a module)."""
    out = set()
    for file in [*SRC.rglob("*.py"), *SRC.rglob("*.c")]:
        parts = file.relative_to(SRC).parts
        if parts[0] in GENERATED_PACKAGES and len(parts) > 1:
            continue
        if file.name == "__init__.py":
            if len(parts) > 1:
                out.add("/".join(parts[:-1]) + "/")
        else:
            out.add("/".join(parts))
    out |= {f"{name}/" for name in GENERATED_PACKAGES if (SRC / name).is_dir()}
    return out


def test_layout_lists_every_module_and_only_those() -> None:
    documented, real = layout_tree(), source_tree()
    missing, gone = sorted(real - set(documented)), sorted(set(documented) - real)
    assert not missing, f"docs/architecture.md layout lacks {missing}"
    assert not gone, f"docs/architecture.md layout lists modules that do not exist: {gone}"
    blank = [path for path, description in documented.items() if not description]
    assert not blank, f"docs/architecture.md layout: no description for {blank}"


def test_relative_links_resolve() -> None:
    broken = []
    for doc in user_docs():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, f"links to nothing: {broken}"


def test_anchors_resolve() -> None:
    """Links to a heading (`#anchor` or `page.md#anchor`) name a heading that exists on that
    page, by GitHub's anchor rule."""
    broken = []
    for doc in user_docs():
        for target in LINK.findall(doc.read_text()):
            page, sep, fragment = target.partition("#")
            if not sep or re.match(r"[a-z]+:", target):
                continue
            linked = doc.parent / page if page else doc
            if linked.suffix != ".md" or not linked.exists():
                continue
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            if f"#{fragment}" not in {_anchor(h) for h in headings}:
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, f"anchors with no heading: {broken}"


def _anchor(heading: str) -> str:
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return "#" + kept.replace(" ", "-")


def test_user_docs_hold_no_commit_hashes() -> None:
    found = []
    for doc in user_docs():
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            found += [f"{doc.relative_to(ROOT)}:{n}: {m}" for m in COMMIT.findall(line)]
    assert not found, f"user docs never name commits: {found}"


def test_readme_stays_short() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; guides belong in docs/"
