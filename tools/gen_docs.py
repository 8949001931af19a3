"""Generate the reference pages under docs/reference/ from the code (run by `make docs`).

    python tools/gen_docs.py           # write the pages
    python tools/gen_docs.py --check   # exit 1 when a committed page differs from the code

The pages are a pure function of the code: sorted, with no dates, no machine's values and no
LOCKGATE_* variable's; tests/test_docs.py regenerates them and fails when a committed page is
stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from docgen.cli_page import cli_page
from docgen.metrics_page import metrics_page
from docgen.openapi_page import admin_api_page

ROOT = Path(__file__).resolve().parent.parent
PAGES: dict[str, Callable[[], str]] = {
    "docs/reference/cli.md": cli_page,
    "docs/reference/admin-api.md": admin_api_page,
    "docs/reference/metrics.md": metrics_page,
}


def pages() -> dict[str, str]:
    """{path relative to the repository: Markdown} of every generated page."""
    return {path: render() for path, render in sorted(PAGES.items())}


def stale(root: Path = ROOT) -> list[str]:
    """The generated pages whose committed text differs from what the code generates."""
    out = []
    for path, text in pages().items():
        file = root / path
        if not file.exists() or file.read_text() != text:
            out.append(path)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages")
    args = parser.parse_args()
    if args.check:
        found = stale()
        for path in found:
            print(f"{path} is stale: run `make docs`", file=sys.stderr)
        return 1 if found else 0
    for path, text in pages().items():
        file = ROOT / path
        file.parent.mkdir(parents=True, exist_ok=True)
        if not file.exists() or file.read_text() != text:
            file.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
