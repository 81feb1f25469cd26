"""README "Layout" names every module of pipelines/, models/ and bench/ (one line each), and every
path it names exists; the paths the rest of the README names exist too."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PACKAGES = ("pipelines", "models", "bench")


def _layout_block() -> str:
    start = README.index("## Layout\n")
    end = README.index("\n## ", start + 1)
    blocks = re.findall(r"```\n(.*?)```", README[start:end], re.S)
    assert len(blocks) == 1, "the Layout section holds one tree"
    return str(blocks[0])


def layout_paths(block: str) -> list[str]:
    """The tree's paths. An entry is a path-like first token followed by two spaces or the end
    of the line, indented two spaces per level (deeper lines continue a description)."""
    paths: list[str] = []
    stack: list[str] = []
    for line in block.splitlines():
        match = re.match(r"( *)([\w.-]+(?:/[\w.-]+)*/?)(?:  |$)", line)
        indent = len(line) - len(line.lstrip(" "))
        if not match or indent % 2 or indent > 2 * len(stack):
            continue
        del stack[indent // 2 :]
        name = match.group(2)
        paths.append("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return paths


def test_the_parser_reads_a_tree() -> None:
    block = (
        "pipelines/\n"
        "  main.py             the entry (python -m pipelines.main)\n"
        "  core/               pure\n"
        "    engine.py         exact\n"
        "                      windows, continued\n"
        "  app/\n"
        "    cli.py            the command\n"
        "models/\n"
        "  train.py            training\n"
        ".ci/run               CI\n"
    )
    assert layout_paths(block) == [
        "pipelines/",
        "pipelines/main.py",
        "pipelines/core/",
        "pipelines/core/engine.py",
        "pipelines/app/",
        "pipelines/app/cli.py",
        "models/",
        "models/train.py",
        ".ci/run",
    ]


def test_every_module_is_in_the_layout() -> None:
    listed = set(layout_paths(_layout_block()))
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    missing = sorted(modules - listed)
    assert not missing, f'README "Layout" does not name: {missing}'


def test_every_layout_path_exists() -> None:
    paths = layout_paths(_layout_block())
    assert len(paths) == len(set(paths)), "a path is listed twice"
    gone = [p for p in paths if not (ROOT / p).exists()]
    assert not gone, f'README "Layout" names paths that do not exist: {gone}'


def test_every_path_the_readme_names_exists() -> None:
    top = r"(?:pipelines|models|bench|tests|dataflow|terraform|docs|\.ci)"
    named = set(re.findall(rf"(?<![\w./-]){top}/[\w./-]*\w", README))
    gone = sorted(p for p in named if not (ROOT / p).exists())
    assert not gone, f"README names paths that do not exist: {gone}"
