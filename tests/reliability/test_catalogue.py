"""Run every case of the catalogue: the documented exit code, one line naming the problem, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgeport.cli import cli
from tests.reliability.catalogue import CASES


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_clear_line_and_its_exit_code(case, tmp_path):
    result = CliRunner().invoke(cli, case.argv(tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == case.exit_code, (result.exit_code, result.stderr, repr(result.exception))
    if case.one_line:
        assert len(lines) == 1 and lines[0].startswith("edgeport: error:"), result.stderr
    assert lines and any(case.fragment in line for line in lines), result.stderr
    assert "Traceback" not in result.output and "internal error" not in result.stderr
