"""Limits: nothing from the wire is unpickled or evaluated, and no secret is committed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH )?PRIVATE KEY-----"),
    "service-account key": re.compile(r'"private_key"\s*:\s*"'),
    "Google API key": re.compile(r"AIza[0-9A-Za-z_-]{35}"),
    "OAuth client secret": re.compile(r"GOCSPX-[0-9A-Za-z_-]{20,}"),
    "AWS access key": re.compile(r"AKIA[0-9A-Z]{16}"),
}
# Code that handles messages from Pub/Sub: it must parse JSON only.
WIRE_CODE = [
    "pipelines/core/schema.py",
    "pipelines/transforms/parse.py",
    "pipelines/transforms/features.py",
]


def _tracked_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [ROOT / line for line in out.splitlines() if line]


def test_no_secrets_are_committed() -> None:
    found = []
    for path in _tracked_files():
        if path.suffix in {".png", ".parquet", ".pb", ".index", ".whl"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        for name, pattern in SECRET_PATTERNS.items():
            if path.name == "test_no_secrets.py":
                continue
            if pattern.search(text):
                found.append((str(path.relative_to(ROOT)), name))
    assert found == []


def test_wire_code_never_unpickles_or_evaluates() -> None:
    forbidden = re.compile(r"\b(pickle|marshal|shelve|yaml\.load|eval|exec)\s*[.(]")
    for name in WIRE_CODE:
        text = (ROOT / name).read_text()
        assert not forbidden.search(text), name
