"""Renderers of the generated reference pages (docs/reference/), driven by tools/gen_docs.py."""
