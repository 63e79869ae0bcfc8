"""The CI examples stay in step with the CLI: each is valid YAML, every edgeport command line in its
shell steps parses, and the files it publishes are the ones a run writes."""

import re
import shlex
from pathlib import Path

import click
import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML reads the CI files (pip install -e '.[dev]')")

from edgeport.cli import cli
from edgeport.outputs import COMMAND_FILES

CI = Path(__file__).resolve().parents[2] / "examples" / "ci"
FILES = sorted(CI.glob("*.yml"))


def _shell_steps(path: Path) -> list[str]:
    """The shell a CI file runs: GitHub's ``run:`` steps, GitLab's ``script:`` lines."""
    data = yaml.safe_load(path.read_text())
    if "jobs" in data:
        return [step["run"] for job in data["jobs"].values() for step in job["steps"] if "run" in step]
    return [line for job in data.values() if isinstance(job, dict) for line in job.get("script", [])]


def _edgeport_lines(path: Path) -> list[list[str]]:
    return [shlex.split(line.strip()) for script in _shell_steps(path) for line in script.splitlines() if line.strip().startswith("edgeport ")]


def _parse(args: list[str]) -> click.Context:
    """Parse a command line as the CLI would, without running it: unknown commands or options raise."""
    command, rest, name = cli, args[1:], "edgeport"
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        found = command.get_command(click.Context(command), name)
        if found is None:
            raise click.UsageError(f"no command '{name}'")
        command = found
    return command.make_context(name, rest)


def test_there_are_both_examples():
    assert {p.name for p in FILES} == {"github-actions.yml", "gitlab-ci.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_edgeport_command_line_parses(path):
    lines = _edgeport_lines(path)
    assert any(args[1] == "run" and "--baseline" in args for args in lines), "the example gates on the last release"
    for args in lines:
        ctx = _parse(args)
        assert ctx.command.name == args[1]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_published_files_are_the_ones_a_run_writes(path):
    text = path.read_text()
    published = set(re.findall(r"edgeport-out/([\w.]+)", text))
    assert {"junit.xml", "report.html"} <= published or ("junit.xml" in published and "- edgeport-out/" in text)
    assert published <= set(COMMAND_FILES["export"]), published - set(COMMAND_FILES["export"])


def test_a_bad_line_would_be_caught():
    with pytest.raises(click.exceptions.NoSuchOption):
        _parse(["edgeport", "run", "edgeport.toml", "--basline", "x"])
    with pytest.raises(click.UsageError):
        _parse(["edgeport", "recipe", "lint", "edgeport.toml"])
