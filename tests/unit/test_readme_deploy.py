"""README "Deploying to Dataflow": every path, rillet command and flag, make target and terraform
output it names exists, so the deployment instructions cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer.core
import typer.main

from pipelines.app.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section() -> str:
    start = README.index("## Deploying to Dataflow")
    end = README.index("\n## ", start + 1)
    return README[start:end]


SECTION = _section()
# Backticked spans and fenced blocks, where the commands and paths live.
CODE = re.findall(r"```sh\n(.*?)```", SECTION, re.S) + re.findall(r"`([^`\n]+)`", SECTION)
CODE_TEXT = "\n".join(CODE).replace("\\\n", " ")


def _repo_paths() -> set[str]:
    paths = set()
    pattern = r"[\w.-]*[\w-]+/[\w./-]+|[\w-]+\.(?:tf|json|py|example|md)\b"
    for token in re.findall(pattern, CODE_TEXT):
        if token.startswith(("gs:", ".rillet/", "environments/")) or "://" in token:
            continue  # .rillet/ is made by the demo; environments/ is relative to terraform/
        paths.add(token.rstrip("/."))
    return paths


def test_the_section_names_paths_and_commands() -> None:
    assert len(_repo_paths()) >= 8
    assert "rillet deploy" in CODE_TEXT and "rillet plan" in SECTION


@pytest.mark.parametrize("path", sorted(_repo_paths()))
def test_named_path_exists(path: str) -> None:
    # backend.tf is made from terraform/backend.tf.example by the user.
    candidates = [ROOT / path, ROOT / "terraform" / path, ROOT / "terraform" / f"{path}.example"]
    assert any(c.exists() for c in candidates), path


def test_terraform_relative_paths_exist() -> None:
    for token in re.findall(r"environments/[\w.]+|backend\.tf\.example", CODE_TEXT):
        example = token if token.endswith(".example") else token + ".example"
        assert (ROOT / "terraform" / example).exists(), token


def test_rillet_commands_and_flags_exist() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    # One command per line (continuations joined); $(...) substitutions are other programs' flags.
    text = re.sub(r"\$\([^)]*\)", "X", CODE_TEXT)
    found = re.findall(r"rillet ([a-z-]+)(.*)", text)
    assert found
    for name, rest in found:
        command = root.commands.get(name)
        assert command is not None, f"rillet {name} is not a command"
        options = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for flag in re.findall(r"--[a-z-]+", rest):
            assert flag in options, f"rillet {name} has no {flag}"


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    named = set(re.findall(r"make ([\w-]+)", SECTION))
    assert named and named <= targets, named - targets


def test_terraform_outputs_exist() -> None:
    declared = (ROOT / "terraform" / "outputs.tf").read_text()
    outputs = set(re.findall(r'^output "(\w+)"', declared, re.M))
    named = set(re.findall(r"output -raw (\w+)", CODE_TEXT))
    assert named and named <= outputs, named - outputs
