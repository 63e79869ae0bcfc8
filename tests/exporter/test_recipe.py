"""Recipes: the schema is strict, every export flag has a key, and a recipe, its flag form and its
manifest all build the same bytes."""

import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeport.artifacts import file_sha256
from edgeport.cli import cli, export_command, run_command
from edgeport.recipe import Recipe, check_recipe
from edgeport.recipe_flags import EXPORT_FLAGS, RUN_FLAGS
from tests.conftest import digits_paths

P = digits_paths()
EXAMPLE = P["weights"].parent / "edgeport.toml"


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _model_hashes(out):
    return {p.name: file_sha256(p) for p in sorted(out.glob("model*"))}


def _has_key(key: str) -> bool:
    import dataclasses
    import typing

    cls = Recipe
    for part in key.split("."):
        hints = typing.get_type_hints(cls)
        if part not in {f.name for f in dataclasses.fields(cls)}:
            return False
        cls = hints[part]
    return True


def test_every_export_flag_is_a_recipe_key_or_a_run_flag():
    export_params = {p.name for p in export_command.params}
    run_params = {p.name for p in run_command.params}
    missing = export_params - set(EXPORT_FLAGS) - set(RUN_FLAGS)
    assert not missing, f"export flags with no recipe key: {missing}"
    assert set(EXPORT_FLAGS) <= export_params, set(EXPORT_FLAGS) - export_params  # no row for a flag that is gone
    assert set(RUN_FLAGS) <= run_params & export_params
    for param, (key, _) in EXPORT_FLAGS.items():
        assert _has_key(key), f"--{param} maps to {key}, which the recipe schema lacks"


def test_the_flag_the_recipe_and_the_passes_offer_the_same_calibration_methods():
    from edgeport.passes.calibration import METHODS
    from edgeport.recipe import CHOICES

    flag = next(p for p in export_command.params if p.name == "calib_method")
    assert tuple(flag.type.choices) == CHOICES["quantization.calibration_method"] == METHODS


def test_recipe_check_names_the_file_the_key_and_the_nearest_one(tmp_path):
    bad = tmp_path / "edgeport.toml"
    bad.write_text('schema_version = 1\n[model]\nsource = "m:f"\n[quantization]\ncalibration_methd = "minmax"\nprecision = "int4"\n'
                   '[[steps]]\nkind = "prune"\nmethod = "channels"\nratoi = 0.5\n')
    result = _invoke("recipe", "check", bad)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert f"{bad}: quantization.calibration_methd: unknown key; did you mean 'calibration_method'?" in lines
    assert any(line.startswith(f"{bad}: quantization.precision: 'int4' is not one of") for line in lines)
    assert f"{bad}: steps[0].ratoi: unknown key; did you mean 'ratio'?" in lines
    assert _invoke("recipe", "check", EXAMPLE).exit_code == 0
    run = _invoke("run", bad, "-o", tmp_path / "out")
    assert run.exit_code == 2 and "(and 2 more: run 'edgeport recipe check" in run.stderr.replace("\n", " ")
    assert not (tmp_path / "out").exists()


def test_schema_version_is_required():
    recipe, problems = check_recipe(EXAMPLE)
    assert recipe is not None and not problems
    data = recipe.to_dict()
    from edgeport.recipe import parse_recipe

    assert parse_recipe({k: v for k, v in data.items() if k != "schema_version"}, "x")[1] == ["x: schema_version: is required (write schema_version = 1)"]
    assert "must be 1, not 2" in parse_recipe({**data, "schema_version": 2}, "x")[1][0]


def test_a_recipe_equal_to_the_demo_flags_builds_the_same_bytes(tmp_path):
    flags_out, recipe_out = tmp_path / "flags", tmp_path / "recipe"
    flags = _invoke("export", "examples.digits.model:DigitsCNN", "--weights", P["weights"], "--input", "image:batchx1x8x8", "--calib", P["calib"],
                    "--eval", P["test"], "--profile", "ci-x86-avx2", "--runs", "5", "-o", flags_out, "--no-cache", "--cache-dir", tmp_path / "c1", "--quiet")
    assert flags.exit_code == 0, flags.output
    recipe = tmp_path / "edgeport.toml"
    recipe.write_text(f'schema_version = 1\n[model]\nsource = "examples.digits.model:DigitsCNN"\nweights = "{P["weights"]}"\n'
                      f'inputs = ["image:batchx1x8x8"]\n[data]\ncalibration = "{P["calib"]}"\nevaluation = "{P["test"]}"\n'
                      f'[validation]\nprofiles = ["ci-x86-avx2"]\nruns = 5\n[outputs]\ndir = "recipe"\n')
    run = _invoke("run", recipe, "--no-cache", "--cache-dir", tmp_path / "c2", "--quiet")
    assert run.exit_code == 0, run.output
    assert _model_hashes(flags_out) == _model_hashes(recipe_out) and len(_model_hashes(recipe_out)) == 2
    assert (recipe_out / "junit.xml").is_file() and not (flags_out / "junit.xml").exists()  # the recipe's outputs.junit defaults on
    flag_recipe = json.loads((flags_out / "manifest.json").read_text())["recipe"]
    file_recipe = json.loads((recipe_out / "manifest.json").read_text())["recipe"]
    assert {**flag_recipe, "outputs": None} == {**file_recipe, "outputs": None}


def test_run_of_a_manifest_rebuilds_the_example_byte_for_byte(tmp_path):
    """The example recipe (distill, prune, distill, int8, two profiles) twice: once from the file,
    then from the manifest it wrote, in a fresh process started in another folder, with a fresh
    cache and no -o (the manifest says where it wrote)."""
    first = tmp_path / "first"
    result = _invoke("run", EXAMPLE, "-o", first, "--cache-dir", tmp_path / "c1", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((first / "report.json").read_text())
    assert [s["name"] for s in report["steps"]][:4] == ["distill", "prune_channels", "distill", "export"]
    assert [p["profile"] for p in report["validation"]["profiles"]] == ["ci-x86-avx2", "raspberry-pi-5"]
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["recipe"]["budgets"]["raspberry-pi-5"] == {"latency_p95_ms": 5.0}
    assert manifest["recipe"]["outputs"]["dir"] == str(first)
    assert {"model.teacher_weights", "data.training", "validation.profiles[0]"} <= set(manifest["inputs"])
    pi5 = report["validation"]["profiles"][1]
    assert next(b for b in pi5["budgets"] if b["name"] == "latency_p95_ms")["limit"] == 5.0
    built = _model_hashes(first)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rebuilt = subprocess.run([sys.executable, "-m", "edgeport.cli", "run", str(first / "manifest.json"), "--cache-dir", str(tmp_path / "c2"), "--quiet"],
                             cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert any((tmp_path / "c2").rglob("*.onnx"))  # built anew in the fresh cache, not copied
    assert json.loads((first / "report.json").read_text())["created_utc"] >= report["created_utc"]
    assert _model_hashes(first) == built and len(built) == 2


def test_a_manifest_replays_without_its_regression_baseline(tmp_path):
    release = tmp_path / "release"
    assert _invoke("export", "examples.digits.model:DigitsCNN", "--weights", P["weights"], "--input", "image:batchx1x8x8", "--calib", P["calib"],
                   "--no-search", "-o", release, "--quiet").exit_code == 0
    gated = tmp_path / "gated"
    result = _invoke("export", "examples.digits.model:DigitsCNN", "--weights", P["weights"], "--input", "image:batchx1x8x8", "--calib", P["calib"],
                     "--no-search", "-o", gated, "--baseline", release, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((gated / "manifest.json").read_text())["recipe"]["regression"]["baseline"] == str(release)
    shutil.rmtree(release)  # the old release is gone: the rebuild still runs, with no gate
    again = _invoke("run", gated / "manifest.json", "-o", tmp_path / "again", "--quiet")
    assert again.exit_code == 0, again.output
    assert "regression" not in json.loads((tmp_path / "again" / "report.json").read_text())
    assert _model_hashes(gated) == _model_hashes(tmp_path / "again")


def test_run_of_a_manifest_refuses_changed_inputs(tmp_path):
    calib = tmp_path / "calib.npz"
    shutil.copyfile(P["calib"], calib)
    out = tmp_path / "out"
    result = _invoke("export", "examples.digits.model:DigitsCNN", "--weights", P["weights"], "--input", "image:batchx1x8x8", "--calib", calib,
                     "--no-search", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    shutil.copyfile(P["test"], calib)
    again = _invoke("run", out / "manifest.json", "-o", tmp_path / "again")
    assert again.exit_code == 2
    assert "input data.calibration of the recipe has changed since" in again.stderr
    assert not (tmp_path / "again").exists()


def test_run_without_a_recipe_reads_edgeport_toml_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("run")
    assert result.exit_code == 2 and "recipe 'edgeport.toml' does not exist" in result.stderr


@pytest.mark.parametrize("text, message", [
    ('schema_version = 1\n[model]\nsource = "m:f"\n[validation]\nprofiles = ["ci-x86-avx2"]\n[budgets.raspberry-pi-5]\nlatency_p95_ms = 1.0\n',
     "budgets.raspberry-pi-5: overrides budgets of a profile that validation.profiles does not list"),
    ('schema_version = 1\n[model]\nsource = "m:f"\n[validation]\nprofiles = ["ci-x86-avx2"]\n[budgets.ci-x86-avx2]\nlatency_p95 = 1.0\n',
     "budgets.ci-x86-avx2.latency_p95: unknown key; did you mean 'latency_p95_ms'?"),
    ('schema_version = 1\n[model]\nsource = "m.onnx"\n[[steps]]\nkind = "distill"\n', "steps: torch steps need a torch model"),
    ('schema_version = 1\n[model]\nsource = "m:f"\n[[steps]]\nkind = "quantize"\n', "steps[0].kind: must be 'distill' or 'prune'"),
    ('schema_version = 1\n[model]\nsource = "m:f"\n[[steps]]\nkind = "prune"\nmethod = "channels"\nratio = 1.5\n', "steps[0]: pruning ratio 1.5 is out of range"),
])
def test_recipe_values_are_checked(tmp_path, text, message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    _, problems = check_recipe(path)
    assert any(message in p for p in problems), problems
