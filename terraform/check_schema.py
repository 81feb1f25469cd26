"""Check terraform/ against the Google provider's own schema, offline: our `terraform validate`.

Terraform and its providers cannot be downloaded here, but HashiCorp published generated
bindings of the provider (`cdktf-cdktf-provider-google` on PyPI). Its jsii assembly carries, for
provider version PROVIDER_VERSION, every resource's arguments and nested blocks, which are
required, and the documented "Possible values" of enumerated arguments. For every resource and
data source in terraform/*.tf this script checks that:

- each argument and nested block (dynamic blocks included) exists in the schema;
- every required argument is set;
- every string literal given to an enumerated argument (directly or as a branch of
  `cond ? "A" : "B"`) is one of the documented values.

Usage: python terraform/check_schema.py [--cache DIR]. Exit status 1 lists the problems.
The wheel (about 50 MB) is fetched once with pip into the cache.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2

PACKAGE = "cdktf-cdktf-provider-google"
BINDINGS_VERSION = "16.12.1"
PROVIDER_VERSION = (
    "6.50.0"  # what BINDINGS_VERSION was generated from (its README); inside versions.tf's pin
)
NAMESPACE = "@cdktf/provider-google"
META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider"}
TERRAFORM = Path(__file__).resolve().parent
DEFAULT_CACHE = TERRAFORM.parent / ".cache" / "provider-schema"
_POSSIBLE = re.compile(r"Possible values(?: are)?:?\s*\[([^\]]*)\]")
_CONDITIONAL = re.compile(r'^\$\{[^?"]+\?\s*"([^"]*)"\s*:\s*"([^"]*)"\s*\}$')


def assembly(cache: Path = DEFAULT_CACHE) -> dict[str, Any]:
    """The bindings' jsii type table, extracted once from the wheel into cache/types.json."""
    types_json = cache / f"types-{BINDINGS_VERSION}.json"
    if types_json.exists():
        return json.loads(types_json.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"cdktf_cdktf_provider_google-{BINDINGS_VERSION}-*.whl"))
    if not wheels:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                f"{PACKAGE}=={BINDINGS_VERSION}",
                "-d",
                str(cache),
            ],
            check=True,
        )
        wheels = sorted(cache.glob(f"cdktf_cdktf_provider_google-{BINDINGS_VERSION}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with wheel.open(name) as tgz, tarfile.open(fileobj=tgz, mode="r:gz") as tar:
            member = tar.extractfile("package/.jsii")
            assert member is not None
            types = json.load(member)["types"]
    types_json.write_text(json.dumps(types))
    wheels[0].unlink()  # keep only the 25 MB type table
    return types


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _pascal(snake: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in snake.split("_"))


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def config_fqn(kind: str, type_name: str) -> str:
    """google_bigtable_table -> @cdktf/provider-google.bigtableTable.BigtableTableConfig.

    Data sources are prefixed: data google_project -> dataGoogleProject.DataGoogleProjectConfig.
    """
    base = type_name.removeprefix("google_")
    if kind == "data":
        base = "data_google_" + base
    return f"{NAMESPACE}.{_camel(base)}.{_pascal(base)}Config"


def _struct_of(type_ref: Any) -> str | None:
    """The provider struct a property's type refers to (a nested block), if any."""
    if isinstance(type_ref, dict):
        fqn = type_ref.get("fqn")
        if isinstance(fqn, str) and fqn.startswith(NAMESPACE):
            return fqn
        for value in type_ref.values():
            found = _struct_of(value)
            if found:
                return found
    elif isinstance(type_ref, list):
        for value in type_ref:
            found = _struct_of(value)
            if found:
                return found
    return None


def _literals(value: Any) -> list[str]:
    """String literals an argument can take: "A", or both branches of ${cond ? "A" : "B"}."""
    if not isinstance(value, str):
        return []
    if value.startswith('"') and "${" not in value:
        return [_unquote(value)]
    match = _CONDITIONAL.match(value)
    return list(match.groups()) if match else []


def check_body(types: dict[str, Any], fqn: str, body: dict[str, Any], where: str) -> Iterator[str]:
    """Problems in one block body checked against struct fqn (recursing into nested blocks)."""
    struct = types.get(fqn)
    if struct is None:
        yield f"{where}: no such type in provider {PROVIDER_VERSION} ({fqn})"
        return
    props = {p["name"]: p for p in struct.get("properties", [])}
    given: set[str] = set()
    for key, value in body.items():
        if key.startswith("__") or key in META_ARGUMENTS:
            continue
        if key == "dynamic":
            for dynamic in value:
                for label, spec in dynamic.items():
                    name = _unquote(label)
                    given.add(_camel(name))
                    yield from _check_property(types, props, name, spec.get("content", []), where)
            continue
        given.add(_camel(key))
        yield from _check_property(types, props, key, value, where)
    for name, prop in props.items():
        if not prop.get("optional") and name not in given and name != "id":
            yield f"{where}: required argument {name} is not set"


def _check_property(
    types: dict[str, Any], props: dict[str, Any], key: str, value: Any, where: str
) -> Iterator[str]:
    prop = props.get(_camel(key))
    if prop is None:
        yield f"{where}: unknown argument or block {key!r}"
        return
    nested = _struct_of(prop["type"])
    if nested and isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for item in value:
            yield from check_body(types, nested, item, f"{where}.{key}")
        return
    docs = prop.get("docs", {})
    text = f"{docs.get('summary', '')} {docs.get('remarks', '')}"
    allowed = _POSSIBLE.search(text)
    if allowed:
        choices = set(re.findall(r'"([^"]*)"', allowed.group(1)))
        for literal in _literals(value):
            if choices and literal not in choices:
                yield f"{where}.{key}: {literal!r} is not one of {sorted(choices)}"


def check(tf_dir: Path = TERRAFORM, cache: Path = DEFAULT_CACHE) -> tuple[int, list[str]]:
    """(blocks checked, every problem) for tf_dir/*.tf against the provider schema."""
    types = assembly(cache)
    problems: list[str] = []
    checked = 0
    for path in sorted(tf_dir.glob("*.tf")):
        with path.open() as fh:
            doc = hcl2.load(fh)
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for type_label, named in block.items():
                    type_name = _unquote(type_label)
                    for name_label, body in named.items():
                        where = f"{path.name}: {type_name}.{_unquote(name_label)}"
                        checked += 1
                        problems.extend(check_body(types, config_fqn(kind, type_name), body, where))
    return checked, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the bindings are kept"
    )
    args = parser.parse_args(argv)
    checked, problems = check(cache=args.cache)
    for problem in problems:
        print(problem)
    print(
        f"terraform/: {checked} resources and data sources against hashicorp/google"
        f" {PROVIDER_VERSION}: {len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
