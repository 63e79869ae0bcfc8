"""The command line: a thin layer over the Python API. Only this module prints and exits."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from typing import Any, Callable

import click

from edgeport.errors import EXIT_INTERNAL, EdgeportError, first_line
from edgeport.outputs import dumps_strict
from edgeport.versions import edgeport_version


def _split(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def _run(action: Callable[[], int]) -> None:
    """Run a command body, turning edgeport errors into one line and the documented exit code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # what matters reaches the report and the summary instead
        try:
            import onnxruntime

            onnxruntime.set_default_logger_severity(3)
            code = action()
        except EdgeportError as exc:
            click.echo(f"edgeport: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeport: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug of ours: say so, with a way to see more
            if os.environ.get("EDGEPORT_DEBUG"):
                traceback.print_exc()
            first = first_line(exc) if str(exc).strip() else ""
            click.echo(f"edgeport: internal error: {type(exc).__name__}: {first[:300]} (set EDGEPORT_DEBUG=1 for a traceback, and please report it)", err=True)
            sys.exit(EXIT_INTERNAL)
    sys.exit(code)


def _with(options):
    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


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
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--calib-samples", type=int, default=256, show_default=True, help="Calibration samples used at most.")
@click.option("--per-channel/--per-tensor", default=None, help="Weight scales per output channel (default) or per tensor.")
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights; default: chosen from the target CPU.")
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
@_with(_run_options)
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

    _run(action)


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
@_with(_run_options)
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

    _run(action)


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

    _run(lambda: _report_problems(file, check_recipe))


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

    _run(action)


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

    _run(action)


@profiles_group.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print a profile's TOML (a built-in name or a file)."""

    def action() -> int:
        from edgeport.device_profiles import load_profile

        profile = load_profile(name)
        click.echo(open(profile.path).read(), nl=False)
        return 0

    _run(action)


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

    _run(action)


@profiles_group.command("check")
@click.argument("file")
def profiles_check(file: str) -> None:
    """Check a profile file against the schema and name every wrong field (exit 2 if any)."""

    from edgeport.device_profiles import check_profile

    _run(lambda: _report_problems(file, check_profile))


def _common_compress_output(result, as_json: bool, quiet: bool) -> None:
    if result.out_dir is None:  # a non-zero rank of a distributed run: rank 0 reports
        return
    if as_json:
        click.echo(dumps_strict(result.report))
    elif not quiet:
        from edgeport.reports import format_table

        comparison = result.report["comparison"]
        rows = [("", "params", "MACs", "ONNX p50 1 thread", "accuracy")]
        for name in ("reference", "result"):
            c = comparison[name]
            acc = f"{c['accuracy']:.2%}" if c.get("accuracy") is not None else "-"
            rows.append((name, f"{c['params']:,}", f"{c['macs']:,}", f"{c['onnx_latency_ms_p50_1thread']:.4f} ms", acc))
        ratios = result.report["ratios"]
        rows.append(("ratio", f"{ratios.get('params', 0):.3f}", f"{ratios.get('macs', 0):.3f}", f"{ratios.get('onnx_latency_ms_p50_1thread', 0):.3f}",
                     f"-{ratios['accuracy_drop']:.2%}" if "accuracy_drop" in ratios else "-"))
        click.echo(format_table(rows))
        fidelity = result.report["fidelity_to_reference"]
        top1 = f", top-1 agreement {fidelity['top1_agreement']:.2%}" if fidelity.get("top1_agreement") is not None else ""
        click.echo(f"fidelity to the reference on {fidelity['data']}: mean cosine {fidelity['cosine_mean']}, SQNR {fidelity['sqnr_db']} dB{top1}")
        if not fidelity["met"]:
            click.echo(f"FAIL: {fidelity['verdict']}", err=True)
        for step in result.report["steps"]:
            for note in step["notes"]:
                click.echo(f"note: {note}", err=True)
        click.echo(f"wrote {result.out_dir / 'model.pt2'} (give it to 'edgeport export')")


_distill_options = [
    click.option("--temperature", type=float, default=4.0, show_default=True, help="Softens the teacher's and student's outputs."),
    click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of the teacher's soft targets; 1 - alpha goes to the labels."),
    click.option("--epochs", type=int, default=30, show_default=True),
    click.option("--batch-size", type=int, default=64, show_default=True),
    click.option("--lr", type=float, default=3e-3, show_default=True),
    click.option("--patience", type=int, default=8, show_default=True, help="Stop after this many epochs without validation gain (0: never)."),
]


_compress_common_options = [
    click.option("--seed", type=int, default=0, show_default=True),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="Where training runs: auto takes cuda:LOCAL_RANK when CUDA is there, else the CPU."),
    click.option("--trust-pickle", is_flag=True, help="Allow loading fully pickled models (runs code from the file)."),
    click.option("--cache-dir", metavar="DIR", help="Where offline teacher outputs are stored (default ~/.cache/edgeport)."),
    click.option("-o", "--output", "out_dir", required=True, metavar="OUTDIR"),
    click.option("--force", is_flag=True, help="Replace files in OUTDIR that this command did not write there."),
    click.option("--min-fidelity", type=float, default=0.9, show_default=True,
                 help="Mean cosine to the reference's outputs below which the result counts as collapsed (exit 1)."),
    click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout, nothing else."),
    click.option("--quiet", is_flag=True, help="Print nothing but errors."),
]


@cli.command("distill")
@click.option("--teacher", required=True, metavar="MODEL", help="The trained model to learn from.")
@click.option("--teacher-weights", metavar="FILE")
@click.option("--student", required=True, metavar="MODEL", help="The smaller model to train (same output layout).")
@click.option("--student-weights", metavar="FILE")
@click.option("--data", required=True, metavar="DATA", help="Training samples (labels optional).")
@click.option("--val-data", metavar="DATA", help="Validation samples for early stopping (default: 10% of --data).")
@click.option("--eval", "eval_data", metavar="DATA", help="Held-out data: fidelity to the reference, and accuracy when it has labels.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]")
@_with(_distill_options)
@click.option("--hint", "hints", multiple=True, metavar="T_LAYER:S_LAYER", help="Feature hint from a teacher layer to a student layer.")
@click.option("--hint-weight", type=float, default=1.0, show_default=True)
@click.option("--offline", is_flag=True, help="Store the teacher's outputs once and reuse them on later runs.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted run into the same OUTDIR.")
@_with(_compress_common_options)
def distill_command(**opts: Any) -> None:
    """Distill a teacher into a smaller student; writes OUTDIR/model.pt2 and report.json.

    Run under torchrun to train with DistributedDataParallel: each rank on its own GPU with nccl
    where CUDA is there, else on the CPU with gloo.
    """

    def action() -> int:
        from edgeport.compress import distill
        from edgeport.passes.distill import DistillConfig
        from edgeport.progress import TerminalProgress

        config = DistillConfig(
            temperature=opts["temperature"], alpha=opts["alpha"], epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
            patience=opts["patience"], hints=tuple(opts["hints"]), hint_weight=opts["hint_weight"], offline=opts["offline"],
            resume=opts["resume"], seed=opts["seed"], device=opts["device"],
        )
        quiet = opts["quiet"] or opts["as_json"]
        result = distill(
            teacher=opts["teacher"], student=opts["student"], data=opts["data"], out_dir=opts["out_dir"], inputs=opts["inputs"] or None,
            teacher_weights=opts["teacher_weights"], student_weights=opts["student_weights"], val_data=opts["val_data"],
            eval_data=opts["eval_data"], config=config, trust_pickle=opts["trust_pickle"], cache_dir=opts["cache_dir"],
            progress=TerminalProgress(enabled=False if quiet else None), force=opts["force"], min_fidelity=opts["min_fidelity"],
        )
        _common_compress_output(result, opts["as_json"], quiet)
        return result.exit_code

    _run(action)


@cli.command("prune")
@click.argument("model")
@click.option("--weights", metavar="FILE")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]")
@click.option("--method", required=True, metavar="METHOD",
              help="magnitude, channels, lowrank, share: any prune:<method> pass of the registry (checked when it runs).")
@click.option("--clusters", type=int, help="share: shared values per layer (k-means; 16 packs to 4-bit indices, up to 256).")
@click.option("--ratio", type=float, help="Share of weights (magnitude) or channels (channels) to remove.")
@click.option("--energy", type=float, default=0.9, show_default=True, help="lowrank: share of the spectrum each factorization keeps.")
@click.option("--steps", type=int, default=1, show_default=True, help="channels: prune in this many rounds, recovering between them.")
@click.option("--round-to", type=int, default=8, show_default=True, help="channels: keep channel counts multiples of this.")
@click.option("--ignore", metavar="A,B", help="channels: layers to keep whole.")
@click.option("--layers", metavar="A,B", help="magnitude/lowrank: only these layers.")
@click.option("--data", metavar="DATA", help="Training data for recovery by distillation.")
@click.option("--teacher", metavar="MODEL", help="Teacher for recovery (default: the unpruned model).")
@click.option("--teacher-weights", metavar="FILE")
@click.option("--recover-epochs", type=int, default=0, show_default=True, help="Distillation epochs after each pruning round (needs --data).")
@click.option("--eval", "eval_data", metavar="DATA", help="Held-out data: fidelity to the reference, and accuracy when it has labels.")
@_with(_compress_common_options)
def prune_command(model: str, **opts: Any) -> None:
    """Prune MODEL (magnitude, channels) or factorize it (lowrank); writes OUTDIR/model.pt2 and report.json.

    Every result is checked by a forward pass, an ONNX export and an ORT-vs-torch parity check.
    """

    def action() -> int:
        from edgeport.compress import prune
        from edgeport.passes.distill import DistillConfig
        from edgeport.progress import TerminalProgress

        quiet = opts["quiet"] or opts["as_json"]
        recover = DistillConfig(epochs=opts["recover_epochs"], seed=opts["seed"], device=opts["device"]) if opts["recover_epochs"] > 0 else None
        result = prune(
            model, method=opts["method"], ratio=opts["ratio"], out_dir=opts["out_dir"], inputs=opts["inputs"] or None, weights=opts["weights"],
            data=opts["data"], teacher=opts["teacher"], teacher_weights=opts["teacher_weights"], steps=opts["steps"], recover=recover,
            round_to=opts["round_to"], ignore=_split(opts["ignore"]) or (), layers=_split(opts["layers"]), energy=opts["energy"],
            eval_data=opts["eval_data"], trust_pickle=opts["trust_pickle"], seed=opts["seed"], cache_dir=opts["cache_dir"],
            progress=TerminalProgress(enabled=False if quiet else None), force=opts["force"], min_fidelity=opts["min_fidelity"],
            method_options={"clusters": opts["clusters"]} if opts["clusters"] is not None else None,
        )
        _common_compress_output(result, opts["as_json"], quiet)
        return result.exit_code

    _run(action)


def main() -> None:
    cli(prog_name="edgeport")


if __name__ == "__main__":
    main()
