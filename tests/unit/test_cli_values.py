"""Every option of every command, and every argument of the streaming job, refuses a malformed
value, a missing path and an unwritable path in one line: exit code 2, ``rillet <command>:
<option> ...``, no traceback.

The table is built from the commands' own declarations (typer's parameters and the job's
argparse actions) and each value kind's malformed values, so a new command or option is covered
without editing this file; an option whose value has no kind (a bare ``str``) fails the test.
Most cases run in-process through ``pipelines.app.cli.main``; a few run as real processes, to
show that a parse error is answered without importing Beam or TensorFlow.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from pipelines.app.cli import app, main
from pipelines.app.parsing import kind_of
from pipelines.core.job_arguments import job_parser
from pipelines.core.values import Value

ROOT = Path(__file__).resolve().parents[2]

# Valid values for the options a command requires (the table gives the others their default).
REQUIRED = {
    "--project": "my-project",
    "--region": "europe-west1",
    "--bucket": "my-bucket",
    "--repository": "rillet",
    "--service-account": "rillet@my-project.iam.gserviceaccount.com",
    "--events-per-second": "100",
    "--input": ".",  # rillet features warm: an existing directory
    "--definitions": str(Path(__file__).resolve().parents[2] / "pipelines/workloads/payments.yaml"),
}
# Free text has no malformed value of its own; its command checks it (tail's --filter: the
# test_cli_errors cases).
FREE_TEXT = {"text"}


def commands() -> Iterator[tuple[list[str], Any]]:
    """(words, click command) for every leaf command of rillet."""
    todo: list[tuple[list[str], Any]] = [([], typer.main.get_command(app))]
    while todo:
        words, command = todo.pop()
        if hasattr(command, "commands"):
            todo += [([*words, name], sub) for name, sub in command.commands.items()]
        else:
            yield words, command


def malformed(kind: Value | None, param: Any, home: Path) -> list[str]:
    """The malformed values of a parameter, from its kind (or typer's own number types)."""
    a_file = home / "a-file"
    if kind is None:
        annotation = param.type_descriptor.annotation
        if param.is_flag or annotation is bool:
            return []
        assert annotation in (int, float, int | None, float | None), (
            f"{param.opts}: a {annotation} without a value kind (pipelines/core/values.py)"
        )
        bad = ["abc"]
        if param.min is not None:
            bad.append(str(param.min - 1))
        return bad
    by_kind: dict[str, list[str]] = {
        "whole": ["abc", "1.5"],
        "number": ["abc", "nan"],
        "day": ["04/03/2018", "2018-4-3", "2018-13-01"],
        "when": ["26/05/2018", "2018-13-01T00:00"],
        "name": ["not a name!"],
        "project": ["Not_A_Project!"],
        "bucket": ["gs://my-bucket", "Not A Bucket"],
        "email": ["not-an-email"],
        "version": ["not a version!"],
        "choice": ["no-such-choice"],
        "input_dir": [str(home / "missing"), str(a_file / "under")],
        "input_file": [str(home / "missing.json"), str(a_file / "under.json"), str(home)],
        "output_dir": [str(a_file / "under")],
        "output_file": [str(a_file / "under.json"), str(home)],
    }
    if kind.kind in FREE_TEXT:
        return []
    assert kind.kind in by_kind, f"{param.opts}: no malformed values for kind {kind.kind!r}"
    bad = list(by_kind[kind.kind])
    if kind.kind == "name":  # each name has its own pattern: the candidates it refuses
        bad = [v for v in ("not a name!", "", "__reserved", "a/b", "x" * 2000) if _refuses(kind, v)]
        assert bad, f"{param.opts}: no malformed value for its pattern {kind}"
    minimum = getattr(kind, "minimum", None)
    if minimum is not None:
        bad.append(str(minimum - 1))
    return bad


def _refuses(kind: Value, value: str) -> bool:
    try:
        kind(value)
    except ValueError:
        return True
    return False


def option_cases(home: Path) -> list[tuple[str, list[str], str]]:
    """(case id, argv, the option the message must name) for every option of every command."""
    cases = []
    for words, command in sorted(commands(), key=lambda c: c[0]):
        required = {}
        for param in command.params:
            if param.required and param.opts[0].startswith("--"):
                assert param.opts[0] in REQUIRED, f"add a valid {param.opts[0]} to REQUIRED"
                required[param.opts[0]] = REQUIRED[param.opts[0]]
        for param in command.params:
            name = param.opts[0]
            positional = not name.startswith("-")
            for value in malformed(kind_of(param), param, home):
                given = [value] if positional else [name, value]
                rest = [a for flag, v in required.items() if flag != name for a in (flag, v)]
                case = f"{' '.join(words)} {name} {value}"
                cases.append((case, [*words, *given, *rest], "" if positional else name))
    for action in job_parser()._actions:
        for value in malformed(action.type, action, home) if action.type else []:
            flag = action.option_strings[0]
            cases.append((f"run {flag} {value}", ["run", f"{flag}={value}"], flag))
    return cases


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory whose defaults (.rillet/models, .rillet/data) exist, and a file that
    paths can be under (nothing can be created under a regular file, root or not)."""
    home = tmp_path_factory.mktemp("cli-values")
    (home / ".rillet" / "models").mkdir(parents=True)
    (home / ".rillet" / "data" / "tiny").mkdir(parents=True)
    (home / "a-file").write_text("not a directory")
    return home


HOME = Path("/tmp/rillet-cli-values")  # the case ids' paths; the fixture's home replaces it


def _cases() -> list[Any]:
    return [pytest.param(argv, flag, id=case) for case, argv, flag in option_cases(HOME)]


@pytest.mark.parametrize(("argv", "flag"), _cases())
def test_every_malformed_value_is_one_line(
    argv: list[str], flag: str, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(home)
    argv = [a.replace(str(HOME), str(home)) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2, (info.value.code, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    words = argv[:2] if argv[0] in ("local", "models", "features") else argv[:1]
    assert lines[0].startswith(f"rillet {' '.join(words)}: {flag}") and len(lines) <= 2, err


def test_the_table_covers_every_command_and_job_argument() -> None:
    """The table is not empty by accident: every command that takes a value appears, and
    every job argument."""
    cases = option_cases(HOME)
    covered = {
        " ".join(argv[:2] if argv[0] in ("local", "models", "features") else argv[:1])
        for _, argv, _ in cases
    }
    leaves = {" ".join(words) for words, _ in commands()}
    assert (
        leaves - covered
        == {"local down", "local status", "models list", "models rollback"} - covered
    )
    job_flags = {a.option_strings[0] for a in job_parser()._actions}
    assert {flag for case, _, flag in cases if case.startswith("run --")} >= job_flags - {"--help"}


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler is not a catch-all: an internal error propagates with its type."""
    import pipelines.app.capacity as capacity

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("an internal bug")

    monkeypatch.setattr(capacity, "plan", broken)
    with pytest.raises(KeyError, match="an internal bug"):
        main(["plan", "--events-per-second", "100"])


def _subprocess(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "--first-day", "04/03/2018"],
        ["simulate", "--preset", "tiny", "--output", "a-file/x"],
        ["retrain", "--now", "26/05/2018"],
        ["run", "--max_batch_size=abc"],
        ["run", "--model_dir=missing"],
        ["models", "show", "--model-dir", "missing"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_a_parse_error_is_answered_without_beam_or_tensorflow(argv: list[str], home: Path) -> None:
    code = (
        "import sys\n"
        "from pipelines.app.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    heavy = [m for m in ('apache_beam', 'tensorflow') if m in sys.modules]\n"
        "    print(exc.code, heavy)\n"
    )
    result = _subprocess(code, home)
    assert result.stdout.strip() == "2 []", (result.stdout, result.stderr)
    assert result.stderr.startswith(f"rillet {argv[0]}"), result.stderr
    assert "Traceback" not in result.stderr


def test_a_misspelt_project_is_one_line_without_credentials(home: Path) -> None:
    """No Google Cloud credentials here: the client's DefaultCredentialsError is the
    environment's, one line and exit 1 (with PUBSUB_EMULATOR_HOST exported, the same typo is a
    missing topic: tests/integration/test_cli_environment.py)."""
    data = home / ".rillet" / "data" / "tiny"
    if not (data / "transactions.parquet").exists():
        from pipelines.app.simulator import PRESETS, simulate, write_dataset

        write_dataset(simulate(PRESETS["tiny"]).head(20), data)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.app.cli", "publish", "--project", "rillet-lcoal"],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(home)},
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("rillet publish: no Google Cloud credentials"), result.stderr
    assert "Traceback" not in result.stderr
