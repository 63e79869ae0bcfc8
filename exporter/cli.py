"""The command line: a thin layer over the Python API. Only this module prints and exits."""

from __future__ import annotations

from typing import Any, Callable

import click

from edgeport.cli_common import run_action, with_options
from edgeport.cli_compress import distill_command, prune_command
from edgeport.outputs import dumps_strict
from edgeport.versions import edgeport_version


_run_options = [
    click.option("--force", is_flag=True, help="Replace files in OUTDIR that this command did not write there (another command's or your own)."),
    click.option("--cache-dir", metavar="DIR", help="Where calibration ranges and unchanged steps are cached (default ~/.cache/edgeport)."),
    click.option("--no-cache", is_flag=True, help="Recompute every step instead of taking unchanged ones from the cache."),
    click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout, nothing else."),
    click.option("--quiet", is_flag=True, help="Print nothing but errors."),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(edgeport_version(), prog_name="edgeport")
def cli() -> None:
    """Take a PyTorch model to a validated, device-ready ONNX artifact."""


@cli.command("export")
@click.argument("model")
@click.option("--weights", metavar="FILE", help="state_dict for a module:attr model (loaded with weights_only=True).")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]", help="Model input, e.g. image:batchx3x224x224:float32. Repeat per input.")
@click.option("--calib", metavar="DATA", help="Calibration data: .npz, folder of .npy/.npz, module:attr, or random[:N].")
@click.option("--eval", "eval_data", metavar="DATA", help="Evaluation data for parity (and accuracy when it has labels).")
@click.option("--stateful", "stateful", multiple=True, metavar="IN:OUT", help="Streaming model: run evaluation feeds in order, input IN taking output OUT of the previous run (e.g. state:stateN). Repeatable.")
@click.option("--precision", type=click.Choice(["int8", "dynamic-int8", "fp16", "fp32", "auto"]), default="int8", show_default=True,
              help="int8: static, calibrated; dynamic-int8: weights only, no calibration; fp16: for GPUs/NPUs; fp32: optimized only; "
                   "auto (with --profile): int8 where the target runs it faster, else fp32.")
@click.option("--no-quantize", is_flag=True, help="Stop at the optimized fp32 model (as --precision fp32).")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a fully pickled model (runs code from the file).")
@click.option("--profile", "profiles", multiple=True, metavar="P", help="Device profile (name or TOML file): int8 settings follow it and the result is validated against it. Repeatable.")
@click.option("--runs", type=int, default=100, show_default=True, help="Timed runs when validating against --profile.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=N", help="Size of a dynamic dim: the budgets' input shape, and the shape an NPU profile (fixed_shapes) compiles for.")
@click.option("-o", "--output", "out_dir", default="edgeport-out", show_default=True, metavar="OUTDIR")
@click.option("--baseline", metavar="PREVIOUS_OUTDIR", help="Compare with the last release's output folder: exit 1 on a regression (limits: a recipe's [regression]).")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo"]), default="auto", show_default=True)
@click.option("--quant-format", type=click.Choice(["qdq", "qoperator"]), default=None, help="Default: qdq, or the profile's.")
@click.option("--calib-method", type=click.Choice(["minmax", "mse", "mean_minmax", "entropy", "percentile"]), default="minmax", show_default=True,
              help="Ranges of the single pass (--no-search); the search tries minmax, mse and percentile.")
@click.option("--calib-samples", type=int, default=256, show_default=True, help="Calibration samples used at most.")
@click.option("--per-channel/--per-tensor", default=None, help="Weight scales per output channel (default) or per tensor.")
@click.option("--reduce-range/--no-reduce-range", default=None, help="Weights bounded for x86 without VNNI: int8 ones on 8-bit levels no two of which the u8*s8 kernel adds past int16 (depthwise Convs keep all 8 bits), uint8 ones on 7 bits; default: chosen from the target CPU.")
@click.option("--op-types", metavar="A,B", help="Op types to quantize; default: all that ONNX Runtime quantizes (with --no-search: chosen from the model family).")
@click.option("--exclude-op-types", metavar="A,B", help="Op types to keep in float.")
@click.option("--exclude-nodes", metavar="A,B", help="Node names to keep in float.")
@click.option("--no-search", is_flag=True, help="int8 in one pass with the given settings, without the accuracy-aware search.")
@click.option("--min-cosine", type=float, help="Fidelity target: cosine to fp32 of every evaluation sample (default 0.99).")
@click.option("--min-top1-agreement", type=float, help="Fidelity target: top-1 agreement with fp32 on class scores (default 0.99).")
@click.option("--max-accuracy-drop", type=float, help="Fidelity target: accuracy drop on labelled evaluation data, as a fraction.")
@click.option("--min-sqnr", type=float, help="Fidelity target: signal-to-quantization-noise ratio in dB.")
@click.option("--metric", metavar="MODULE:FN", help="Fidelity target: fn(reference_outputs, candidate_outputs, labels) -> float, higher is better.")
@click.option("--metric-min", type=float, help="The lowest acceptable --metric value.")
@click.option("--max-fallback", type=float, default=0.25, show_default=True, help="Share of MACs the search may leave in float.")
@click.option("--search-budget", metavar="Ns|Nt", help="Bound on the int8 search: seconds (300s) or trials (80t). Default 600s.")
@click.option("--recurrent", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="GRU/LSTM cells the int8 search rewrites into int8 steps: auto (steps large enough to gain), always, never.")
@click.option("--seed", type=int, default=0, show_default=True)
@with_options(_run_options)
def export_command(model: str, **opts: Any) -> None:
    """Export MODEL to ONNX, optimize it and quantize it to int8.

    MODEL is package.module:attr (an nn.Module or a zero-argument factory), a TorchScript file,
    a torch.export .pt2 file, or an .onnx file. Writes OUTDIR/model.onnx, model.fp32.onnx,
    report.json, report.md, report.html and manifest.json.
    """

    def action() -> int:
        from edgeport.recipe_flags import recipe_from_flags
        from edgeport.run import run_recipe

        recipe = recipe_from_flags(model, opts)
        return _run_and_report(lambda progress: run_recipe(recipe, cache_dir=opts["cache_dir"], use_cache=not opts["no_cache"],
                                                             force=opts["force"], progress=progress), opts)

    run_action(action)


def _run_and_report(work: Callable[[Any], Any], opts: dict[str, Any]) -> int:
    """Run an export (from flags or a recipe) and print what export and run print."""
    from edgeport.progress import TerminalProgress
    from edgeport.regression_report import summary_lines as regression_lines
    from edgeport.reports import fidelity_lines, format_table, summary_rows
    from edgeport.validation_report import summary_lines

    quiet = opts["quiet"] or opts["as_json"]
    result = work(TerminalProgress(enabled=False if quiet else None))
    if opts["as_json"]:
        click.echo(dumps_strict(result.report))
    elif not quiet:
        click.echo(format_table(summary_rows(result.report)))
        summary = result.report["summary"]
        if "size_ratio" in summary:
            click.echo(f"{summary['precision']} model is {summary['size_ratio']:.1%} of fp32 ({summary['artifact_bytes'] / 1e6:.2f} MB)")
        for warning in result.report["warnings"]:
            click.echo(f"warning: {warning}", err=True)
        for line in fidelity_lines(result.report):
            click.echo(line)
        if "validation" in result.report:
            click.echo("\n".join(summary_lines(result.report["validation"])))
        if "regression" in result.report:
            click.echo("\n".join(regression_lines(result.report["regression"])))
        click.echo(f"wrote {result.out_dir}")
    return result.exit_code


@cli.command("run")
@click.argument("recipe", required=False, metavar="[RECIPE]")
@click.option("-o", "--output", "out_dir", metavar="OUTDIR", help="Write here instead of the recipe's outputs.dir.")
@click.option("--baseline", metavar="PREVIOUS_OUTDIR", help="Compare with the last release's output folder (regression gate).")
@with_options(_run_options)
def run_command(recipe: str | None, **opts: Any) -> None:
    """Run a recipe: RECIPE is a TOML file (default ./edgeport.toml) or an earlier run's manifest.json,
    which builds the same artifacts again when its inputs are unchanged."""

    def action() -> int:
        from edgeport.run import load_run_source, run_recipe

        loaded, warnings = load_run_source(recipe)
        for warning in [] if opts["quiet"] or opts["as_json"] else warnings:
            click.echo(f"warning: {warning}", err=True)
        return _run_and_report(lambda progress: run_recipe(loaded, out_dir=opts["out_dir"], baseline=opts["baseline"], cache_dir=opts["cache_dir"],
                                                             use_cache=not opts["no_cache"], force=opts["force"], progress=progress), opts)

    run_action(action)


def _report_problems(file: str, check: Callable[[str], tuple[Any, list[str]]]) -> int:
    """A schema check's problems on stderr, one a line (exit 2), or that the file is valid."""
    _, problems = check(file)
    for problem in problems:
        click.echo(problem, err=True)
    if not problems:
        click.echo(f"{file}: valid")
    return 2 if problems else 0


@cli.group("recipe")
def recipe_group() -> None:
    """Check recipe files (edgeport.toml)."""


@recipe_group.command("check")
@click.argument("file")
def recipe_check(file: str) -> None:
    """Check a recipe against the schema and name every wrong key (exit 2 if any)."""

    from edgeport.recipe import check_recipe

    run_action(lambda: _report_problems(file, check_recipe))


def _remote_options(command: Callable[..., None]) -> Callable[..., None]:
    """--remote and its SSH settings, the same for validate and profiles calibrate."""
    for option in reversed((
        click.option("--remote", metavar="ssh://USER@HOST[:PORT]", help="Run on that device over SSH (it needs python, numpy and onnxruntime)."),
        click.option("--remote-python", metavar="PATH", help="The device's python (default: python3)."),
        click.option("--identity", type=click.Path(dir_okay=False), metavar="FILE", help="SSH private key for --remote."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), metavar="FILE", help="known_hosts file for --remote (default: ~/.ssh/known_hosts)."),
    )):
        command = option(command)
    return command


def _remote_target(opts: dict[str, Any]):
    """The device --remote names, or None to run here."""
    if not opts["remote"]:
        return None
    from edgeport.runtimes.remote import RemoteTarget

    return RemoteTarget.parse(opts["remote"], opts["remote_python"], opts["identity"], opts["known_hosts"])


@cli.command("validate")
@click.argument("model")
@click.option("--profile", "profiles", multiple=True, required=True, metavar="P", help="Device profile (name or TOML file). Repeat for a matrix.")
@click.option("--reference", metavar="REF.onnx", help="The model to compare outputs with (e.g. model.fp32.onnx).")
@click.option("--data", metavar="DATA", help="Evaluation data for parity (and accuracy when it has labels).")
@click.option("--stateful", "stateful", multiple=True, metavar="IN:OUT", help="Streaming model: run evaluation feeds in order, input IN taking output OUT of the previous run (e.g. state:stateN). Repeatable.")
@click.option("--runs", type=int, default=100, show_default=True, help="Timed runs per profile.")
@click.option("--time-limit", type=float, default=60.0, show_default=True, help="Seconds of timed runs at most per profile.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=N", help="Size of a dynamic dim for the budgets' input shape.")
@click.option("--junit", type=click.Path(dir_okay=False), metavar="FILE", help="Write JUnit XML: each budget a test case.")
@click.option("--baseline", metavar="PREVIOUS_OUTDIR", help="Compare with the last release's output folder (regression gate): exit 1 on a regression.")
@click.option("-o", "--output", "out_dir", metavar="OUTDIR", help="Write validation.json and validation.md there (beside an export's files).")
@click.option("--force", is_flag=True, help="Replace files in OUTDIR that this command did not write there (another command's or your own).")
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout, nothing else.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def validate_command(model: str, profiles: tuple[str, ...], **opts: Any) -> None:
    """Measure MODEL.onnx against device profiles: latency, memory, size, provider coverage, parity.

    Exits 0 when every budget is met, 1 when one fails, 2 on bad input.
    """

    def action() -> int:
        from edgeport.progress import TerminalProgress
        from edgeport.validation import validate
        from edgeport.validation_report import summary_lines

        quiet = opts["quiet"] or opts["as_json"]
        from edgeport.recipe_flags import parse_dim

        dims = dict(parse_dim(d) for d in opts["dims"])
        remote = _remote_target(opts)
        result = validate(
            model, profile=list(profiles), reference=opts["reference"], data=opts["data"], runs=opts["runs"],
            time_limit_s=opts["time_limit"], dims=dims, progress=TerminalProgress(enabled=False if quiet else None),
            out_dir=opts["out_dir"], junit=opts["junit"], force=opts["force"], stateful=opts["stateful"] or None, remote=remote,
            baseline=opts["baseline"],
        )
        if opts["as_json"]:
            click.echo(dumps_strict(result.report))
        elif not quiet:
            click.echo("\n".join(summary_lines(result.report)))
            if "regression" in result.report:
                from edgeport.regression_report import summary_lines as regression_lines

                click.echo("\n".join(regression_lines(result.report["regression"])))
        return result.exit_code

    run_action(action)


@cli.group("profiles")
def profiles_group() -> None:
    """List, show and check device profiles."""


@profiles_group.command("list")
def profiles_list() -> None:
    """List the built-in profiles."""

    def action() -> int:
        from edgeport.device_profiles import builtin_names, load_profile

        for name in builtin_names():
            profile = load_profile(name)
            click.echo(f"{name:<20} {', '.join(profile.runtime.execution_providers):<60} {profile.description}")
        return 0

    run_action(action)


@profiles_group.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print a profile's TOML (a built-in name or a file)."""

    def action() -> int:
        from edgeport.device_profiles import load_profile

        profile = load_profile(name)
        click.echo(open(profile.path).read(), nl=False)
        return 0

    run_action(action)


@profiles_group.command("calibrate")
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="the profile file to write (TOML)")
@click.option("--threads", type=int, default=None, help="intra-op threads to measure at (default: every core)")
@click.option("--name", default=None, help="the profile's name (default: calibrated-host)")
@click.option("--budgets-from", default=None, help="copy the budgets of this profile (a built-in name or a file)")
@_remote_options
@click.option("--quiet", is_flag=True, help="no progress")
def profiles_calibrate(out: str, threads: int | None, name: str | None, budgets_from: str | None, quiet: bool, **ssh: Any) -> None:
    """Measure this machine's ONNX Runtime CPU rates per op class and precision and write a profile
    whose latency estimates use them, with the estimator's error measured on check networks."""

    def action() -> int:
        from edgeport.profile_calibration import calibrate_profile
        from edgeport.progress import TerminalProgress
        from edgeport.runtimes.estimate import band_text

        remote = _remote_target(ssh)
        profile = calibrate_profile(out, threads, name, budgets_from, progress=TerminalProgress(enabled=False if quiet else None), remote=remote)
        m = profile.measured
        click.echo(f"{out}: {profile.name}, {m.threads} threads; int8/fp32 speed: "
                   + ", ".join(f"{k} {v:.2f}x" for k, v in m.int8_speedup.items())
                   + f"; {band_text({'error_band': {'median_abs_error': m.estimate_error_median, 'max_abs_error': m.estimate_error_max, 'models': m.estimate_error_models}})}")
        return 0

    run_action(action)


@profiles_group.command("check")
@click.argument("file")
def profiles_check(file: str) -> None:
    """Check a profile file against the schema and name every wrong field (exit 2 if any)."""

    from edgeport.device_profiles import check_profile

    run_action(lambda: _report_problems(file, check_profile))


cli.add_command(distill_command)
cli.add_command(prune_command)


def main() -> None:
    cli(prog_name="edgeport")


if __name__ == "__main__":
    main()
