#!/usr/bin/env python3
"""Check Herald's protocol goldens against the JSON Schemas in proto/schema/.

Usage: python3 proto/check_goldens.py      (needs `pip install jsonschema`, 4.x)

What it checks:
- both schemas are valid JSON Schema draft 2020-12;
- golden/client.json:
  - `"expect": "ok"` cases validate against the client schema as the server reads it:
    unknown fields are ignored, so every `additionalProperties: false` is dropped (see README §6.1);
  - `"expect_error": "bad_request"` cases fail that schema (even with unknown fields ignored),
    unless their only fault is an integer written as a float (`"id": 1.0`), which JSON Schema
    counts as an integer and Herald refuses (README §6.1);
  - other `expect_error` codes (which depend on server state) must be well-formed frames;
  - `raw` cases are not parseable as JSON at all and expect `bad_frame`;
- golden/server.json: every case validates against the strict server schema, and every server
  frame shape the README lists has an example;
- every error code in the server schema is documented in README.md.

Regexes follow ECMA-262, as JSON Schema requires: `$` means end of input. Python's `$` also
matches before a final newline, so the `pattern` keyword is re-implemented here with `\\Z`.

Prints one line per failure and ends with `N passed, N failed`; exits 1 when anything failed.
"""

import copy
import json
import re
import sys
from pathlib import Path

try:
    import jsonschema
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError
except ImportError:
    print("jsonschema is not installed: pip install jsonschema", file=sys.stderr)
    print("0 passed, 1 failed")
    sys.exit(1)

HERE = Path(__file__).resolve().parent
CLIENT_SCHEMA = HERE / "schema" / "client-frame.schema.json"
SERVER_SCHEMA = HERE / "schema" / "server-frame.schema.json"
CLIENT_GOLDEN = HERE / "golden" / "client.json"
SERVER_GOLDEN = HERE / "golden" / "server.json"
README = HERE / "README.md"

# Fields a v1 client sends as integers, by path from the frame's root.
INTEGER_FIELDS = (("id",), ("since", "offset"))

passed = 0
failed = 0


def ok(_what):
    global passed
    passed += 1


def fail(what, why):
    global failed
    failed += 1
    print(f"FAIL {what}: {why}")


def ecma_pattern(validator, pattern, instance, schema):
    """The `pattern` keyword with ECMA-262 `$` (end of input, not 'before a final newline')."""
    if not validator.is_type(instance, "string"):
        return
    translated = re.sub(r"(?<!\\)\$$", r"\\Z", pattern)
    if not re.search(translated, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaValidator = validators.extend(Draft202012Validator, {"pattern": ecma_pattern})


def without_additional_properties_false(schema):
    """The schema as the server reads frames: unknown fields are ignored."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("additionalProperties") is False:
                del node["additionalProperties"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def strict_json(text):
    """json.loads that refuses NaN/Infinity, which are not JSON."""

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def integers_written_as_floats(frame):
    """Integer fields holding a float with no fraction (e.g. 1.0): JSON Schema accepts them."""
    found = []
    if not isinstance(frame, dict):
        return found
    for path in INTEGER_FIELDS:
        node = frame
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, float) and node.is_integer():
            found.append(".".join(path))
    return found


def first_error(validator, instance):
    """None when `instance` is valid, else a readable reason.

    A oneOf only says "not valid under any of the given schemas"; when the frame names an op that
    has its own branch in $defs, the reason comes from that branch instead.
    """
    if validator.is_valid(instance):
        return None
    schema = validator.schema
    op = instance.get("op") if isinstance(instance, dict) else None
    if isinstance(op, str) and op in schema.get("$defs", {}):
        branch = {key: value for key, value in schema.items() if key != "oneOf"}
        branch["$ref"] = f"#/$defs/{op}"
        validator = EcmaValidator(branch)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return "not valid"
    error = errors[0]
    where = "/".join(str(p) for p in error.absolute_path) or "<root>"
    return f"{where}: {error.message}"


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return strict_json(f.read())
    except (OSError, ValueError) as e:
        fail(path.name, f"cannot load: {e}")
        return None


def check_schemas():
    schemas = {}
    for path in (CLIENT_SCHEMA, SERVER_SCHEMA):
        schema = load(path)
        if schema is None:
            continue
        try:
            Draft202012Validator.check_schema(schema)
            ok(path.name)
            schemas[path.name] = schema
        except jsonschema.SchemaError as e:
            fail(path.name, f"not a valid 2020-12 schema: {e.message}")
    return schemas.get(CLIENT_SCHEMA.name), schemas.get(SERVER_SCHEMA.name)


def check_client(schema, codes):
    cases = load(CLIENT_GOLDEN)
    if schema is None or cases is None:
        return
    lenient = EcmaValidator(without_additional_properties_false(schema))
    seen = set()
    ops_ok = set()
    for i, case in enumerate(cases):
        name = case.get("name") if isinstance(case, dict) else None
        what = f"client[{i}] {name!r}"
        if not isinstance(name, str) or not name:
            fail(what, "no name")
            continue
        if name in seen:
            fail(what, "duplicate name")
            continue
        seen.add(name)
        allowed = {"name", "frame", "raw", "expect", "expect_error"}
        if set(case) - allowed:
            fail(what, f"unknown keys {sorted(set(case) - allowed)}")
            continue
        if ("frame" in case) == ("raw" in case):
            fail(what, "needs exactly one of frame, raw")
            continue
        if ("expect" in case) == ("expect_error" in case):
            fail(what, "needs exactly one of expect, expect_error")
            continue
        if "expect" in case and case["expect"] != "ok":
            fail(what, f'expect must be "ok", not {case["expect"]!r}')
            continue
        code = case.get("expect_error")
        if code is not None and code not in codes:
            fail(what, f"expect_error {code!r} is not an error code of the server schema")
            continue

        if "raw" in case:
            raw = case["raw"]
            if not isinstance(raw, str):
                fail(what, "raw must be a string")
            elif code != "bad_frame":
                fail(what, "a raw (non-JSON) case must expect bad_frame")
            else:
                try:
                    strict_json(raw)
                    fail(what, "raw text parses as JSON; use frame instead")
                except ValueError:
                    ok(what)
            continue

        frame = case["frame"]
        floats = integers_written_as_floats(frame)
        if code is None:
            err = first_error(lenient, frame)
            if err:
                fail(what, f"valid frame fails the schema: {err}")
            elif floats:
                fail(what, f"valid frame has integers written as floats: {floats}")
            else:
                ok(what)
                ops_ok.add(frame.get("op"))
        elif code == "bad_frame":
            fail(what, "a frame that is valid JSON cannot be bad_frame (that is for raw cases)")
        elif code == "bad_request":
            if floats:
                # The one fault JSON Schema cannot express; make sure it is the only one.
                if lenient.is_valid(frame):
                    ok(what)
                else:
                    fail(what, f"has integers written as floats {floats} and other faults too")
            elif lenient.is_valid(frame):
                fail(what, "invalid frame passes the schema")
            else:
                ok(what)
        else:
            err = first_error(lenient, frame)
            if err:
                fail(what, f"a {code} case must be a well-formed frame: {err}")
            else:
                ok(what)
    missing = {"sub", "unsub", "pub", "send", "refresh"} - ops_ok
    if missing:
        fail("client.json coverage", f"no valid example of {sorted(missing)}")
    else:
        ok("client.json coverage")


def check_server(schema, codes):
    cases = load(SERVER_GOLDEN)
    if schema is None or cases is None:
        return
    validator = EcmaValidator(schema)
    shapes = set()
    seen = set()
    for i, case in enumerate(cases):
        name = case.get("name") if isinstance(case, dict) else None
        what = f"server[{i}] {name!r}"
        if not isinstance(name, str) or not name or name in seen:
            fail(what, "missing or duplicate name")
            continue
        seen.add(name)
        if set(case) != {"name", "frame"}:
            fail(what, "a server case has exactly the keys name and frame")
            continue
        frame = case["frame"]
        err = first_error(validator, frame)
        if err:
            fail(what, err)
            continue
        ok(what)
        op = frame["op"]
        if op == "ok":
            if "recovered" in frame:
                shapes.add(f"ok recovered={frame['recovered']}")
            elif "offset" in frame:
                shapes.add("ok offset")
            elif "expires_at" in frame:
                shapes.add("ok expires_at")
            else:
                shapes.add("ok bare")
        elif op == "error":
            shapes.add("error " + ("id" if "id" in frame else "no id"))
            if "status" in frame:
                shapes.add("error status")
        elif op == "direct":
            shapes.add("direct " + ("from" if "from" in frame else "no from"))
        elif op == "welcome":
            shapes.add("welcome expires_at" if "expires_at" in frame else "welcome")
        else:
            shapes.add(op)
    wanted = {
        "welcome", "welcome expires_at", "ok offset", "ok recovered=True", "ok recovered=False",
        "ok bare", "ok expires_at", "error id", "error no id", "error status", "msg", "reply",
        "direct from", "direct no from", "unsubscribed",
    }
    missing = wanted - shapes
    if missing:
        fail("server.json coverage", f"no example of {sorted(missing)}")
    else:
        ok("server.json coverage")


def check_readme(codes):
    try:
        text = README.read_text(encoding="utf-8")
    except OSError as e:
        fail("README.md", f"cannot read: {e}")
        return
    for code in sorted(codes):
        if f"`{code}`" in text:
            ok(f"README documents {code}")
        else:
            fail("README.md", f"error code `{code}` is not documented")


def main():
    client_schema, server_schema = check_schemas()
    codes = set()
    if server_schema is not None:
        codes = set(server_schema["$defs"]["code"]["enum"])
    check_client(client_schema, codes)
    check_server(server_schema, codes)
    check_readme(codes)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
