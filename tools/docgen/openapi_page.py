"""docs/reference/admin-api.md from the OpenAPI document the admin listener serves
(`lockgate.control.admin_openapi.openapi_document`).

Any OpenAPI 3.1 document renders: `$ref`s are resolved (components shared by many operations
are described once, at the end), path-level parameters apply to every operation of the path,
and request bodies are flattened into one row per field (`variants[].name`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from docgen.markdown import anchor, code, header, link, table

METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
# Schema keywords shown in a field's notes, in this order, as "word value".
CONSTRAINTS = {
    "enum": "one of",
    "const": "always",
    "format": "format",
    "pattern": "pattern",
    "minimum": "minimum",
    "exclusiveMinimum": "greater than",
    "maximum": "maximum",
    "exclusiveMaximum": "less than",
    "multipleOf": "multiple of",
    "minLength": "min length",
    "maxLength": "max length",
    "minItems": "min items",
    "maxItems": "max items",
    "default": "default",
}
MAX_DEPTH = 6  # nesting shown in a body's table (a recursive schema stops here)


class Document:
    """An OpenAPI document with `$ref` resolution."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def resolve(self, node: Any) -> Any:
        seen = set()
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen or not ref.startswith("#/"):
                raise ValueError(f"cannot resolve {ref!r}")
            seen.add(ref)
            target: Any = self.doc
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def type_of(self, schema: Any) -> str:
        """A schema's type in words; a named schema is a link to its own section."""
        name = schema_name(schema)
        if name is not None:
            return f"[{name}]({anchor(schema_heading(name))})"
        s = self.resolve(schema)
        if not isinstance(s, dict):
            return ""
        for key in ("oneOf", "anyOf"):
            if key in s:
                return " or ".join(self.type_of(x) for x in s[key])
        kind = s.get("type") or _implied_type(s)
        if isinstance(kind, list):
            return " or ".join(kind)
        if kind == "array":
            return f"array of {self.type_of(s.get('items', {}))}"
        extra = s.get("additionalProperties")
        if kind == "object" and isinstance(extra, dict) and "properties" not in s:
            return f"object of {self.type_of(extra)}"
        return str(kind)

    def properties(self, schema: Any) -> tuple[dict[str, Any], set[str]]:
        """An object schema's properties and required names, `allOf` parts merged."""
        s = self.resolve(schema)
        props = dict(s.get("properties", {}))
        required = set(s.get("required", []))
        for part in s.get("allOf", []):
            more, need = self.properties(part)
            props |= more
            required |= need
        return props, required

    def fields(self, schema: Any, prefix: str = "", depth: int = 0) -> Iterator[list[str]]:
        """One row (field, type, required, notes) per field, nested fields included; a named
        schema below the top is not expanded (its own section describes it)."""
        if depth > MAX_DEPTH or (depth > 0 and schema_name(schema) is not None):
            return
        s = self.resolve(schema)
        if not isinstance(s, dict):
            return
        if s.get("type") == "array" or "items" in s:
            yield from self.fields(s.get("items", {}), prefix + "[]", depth + 1)
            return
        props, required = self.properties(s)
        for name, prop in props.items():
            path = f"{prefix}.{name}" if prefix else name
            row = [code(path), self.type_of(prop), "yes" if name in required else ""]
            yield [*row, notes(prop if schema_name(prop) else self.resolve(prop))]
            yield from self.fields(prop, path, depth + 1)


def schema_name(node: Any) -> str | None:
    """The name of a schema that is a reference to `#/components/schemas/NAME`."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    prefix = "#/components/schemas/"
    return ref[len(prefix) :] if isinstance(ref, str) and ref.startswith(prefix) else None


def schema_heading(name: str) -> str:
    return f"{name} (schema)"


def _implied_type(s: dict[str, Any]) -> str:
    if "properties" in s or "allOf" in s or "additionalProperties" in s:
        return "object"
    values = s.get("enum", [s["const"]] if "const" in s else [])
    kinds = {type(v).__name__ for v in values}
    names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
    return " or ".join(sorted(names.get(k, k) for k in kinds)) if kinds else "any"


def notes(schema: dict[str, Any]) -> str:
    parts = []
    for key, word in CONSTRAINTS.items():
        if key in schema:
            value = schema[key]
            if isinstance(value, list):
                shown = ", ".join(code(json.dumps(v)) for v in value)
            else:
                shown = code(value if key == "pattern" else json.dumps(value))
            parts.append(f"{word} {shown}")
    if schema.get("description"):
        parts.append(str(schema["description"]))
    return "; ".join(parts)


def _parameters(api: Document, path_item: dict[str, Any], op: dict[str, Any]) -> list[Any]:
    """Path-level parameters overridden by the operation's own (same name and location)."""
    merged: dict[tuple[str, str], Any] = {}
    for raw in [*path_item.get("parameters", []), *op.get("parameters", [])]:
        p = api.resolve(raw)
        merged[(p["name"], p["in"])] = p
    return list(merged.values())


def _ref_name(node: Any) -> str | None:
    if isinstance(node, dict) and "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    return None


def _body(api: Document, body: Any) -> list[str]:
    body = api.resolve(body)
    lines = []
    for media, content in sorted(body.get("content", {}).items()):
        raw = content.get("schema", {})
        schema = api.resolve(raw)
        need = "required" if body.get("required") else "optional"
        lines += [f"Request body ({need}), {code(media)}: {api.type_of(raw)}.", ""]
        if schema.get("description"):
            lines += [str(schema["description"]), ""]
        rows = list(api.fields(raw))
        if rows:
            lines += table(["field", "type", "required", "notes"], rows)
    return lines


def _responses(api: Document, responses: dict[str, Any]) -> list[str]:
    if not responses:
        return ["Responses: not described.", ""]
    rows = []
    for status, raw in sorted(responses.items()):
        name = _ref_name(raw)
        response = api.resolve(raw)
        content = response.get("content", {})
        media = ", ".join(
            f"{code(m)} {api.type_of(content[m]['schema'])}" if "schema" in content[m] else code(m)
            for m in sorted(content)
        )
        described = response.get("description", "")
        shown = f"[{name}]({anchor(name + ' (response)')})" if name else described
        rows.append([code(status), shown, media])
    return table(["status", "answer", "body"], rows)


def _auth(api: Document, op: dict[str, Any]) -> str:
    """The security schemes an operation requires (any one of them), or "none"."""
    required = op.get("security", api.doc.get("security", []))
    names = sorted({name for alternative in required for name in alternative})
    return " or ".join(code(n) for n in names) if names else "none"


def _schemes(api: Document) -> list[str]:
    schemes = api.doc.get("components", {}).get("securitySchemes", {})
    rows = []
    for name in sorted(schemes):
        s = schemes[name]
        kind = f"HTTP {s.get('scheme', '')} (`Authorization: Bearer <token>`)"
        if s.get("type") != "http" or s.get("scheme") != "bearer":
            kind = ", ".join(f"{k} {v}" for k, v in sorted(s.items()))
        rows.append([code(name), kind, s.get("description", "")])
    if not rows:
        return []
    intro = "The operations marked with a scheme need its credentials:"
    return ["## Authentication", "", intro, "", *table(["scheme", "sent as", "notes"], rows)]


def operations(api: Document) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(method, path, operation, path item), sorted by path then method."""
    paths = api.doc.get("paths", {})
    for path in sorted(paths):
        item = paths[path]
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method], item


def _operation(api: Document, method: str, path: str, op: Any, item: Any) -> list[str]:
    lines = [f"## {method} {path}", "", op.get("summary", ""), ""]
    if op.get("description"):
        lines += [op["description"], ""]
    lines += [f"Authentication: {_auth(api, op)}.", ""]
    params = _parameters(api, item, op)
    if params:
        rows = [
            [
                code(p["name"]),
                p["in"],
                "yes" if p.get("required") else "",
                api.type_of(p.get("schema", {})),
                p.get("description", ""),
            ]
            for p in params
        ]
        lines += table(["parameter", "in", "required", "type", "description"], rows)
    if "requestBody" in op:
        lines += _body(api, op["requestBody"])
    return lines + _responses(api, op.get("responses", {}))


def _components(api: Document) -> list[str]:
    responses = api.doc.get("components", {}).get("responses", {})
    lines: list[str] = []
    for name in sorted(responses):
        response = responses[name]
        lines += [f"## {name} (response)", "", response.get("description", ""), ""]
        for media, content in sorted(response.get("content", {}).items()):
            schema = content.get("schema", {})
            lines += [f"{code(media)}: {api.type_of(schema)}.", ""]
            rows = list(api.fields(schema))
            if rows:
                lines += table(["field", "type", "required", "notes"], rows)
    schemas = api.doc.get("components", {}).get("schemas", {})
    for name in sorted(schemas):
        schema = schemas[name]
        lines += [f"## {schema_heading(name)}", "", f"{api.type_of(schema)}.", ""]
        if schema.get("description"):
            lines += [str(schema["description"]), ""]
        rows = list(api.fields(schema))
        if rows:
            lines += table(["field", "type", "required", "notes"], rows)
    return lines


INTRO = """\
Every operation of the admin API, read from the OpenAPI document the admin listener serves at
`GET /openapi.json`. Answers are JSON unless the table says otherwise; an error answer is
`{"error": "..."}`."""


def admin_api_page(doc: dict[str, Any] | None = None) -> str:
    """The page's Markdown (of `doc`, by default the admin API's own document)."""
    if doc is None:
        from lockgate.control.admin_openapi import openapi_document

        doc = openapi_document()
    json.dumps(doc)  # plain data only: what is served is what is documented
    api = Document(doc)
    source = "`lockgate.control.admin_openapi.openapi_document`"
    lines = header("Admin API reference", source, INTRO)
    ops = list(operations(api))
    rows = [[link(f"{m} {p}"), op.get("summary", ""), _auth(api, op)] for m, p, op, _ in ops]
    lines += table(["operation", "does", "authentication"], rows)
    lines += _schemes(api)
    for method, path, op, item in ops:
        lines += _operation(api, method, path, op, item)
    lines += _components(api)
    return "\n".join(lines).rstrip() + "\n"
