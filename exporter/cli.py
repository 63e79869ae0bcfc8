"""The command line: a thin layer over the Python API. Only this module prints and exits."""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from typing import Any, Callable

import click

from edgeport.errors import EXIT_INTERNAL, EdgeportError
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
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"edgeport: internal error: {type(exc).__name__}: {first[:300]} (set EDGEPORT_DEBUG=1 for a traceback, and please report it)", err=True)
            sys.exit(EXIT_INTERNAL)
    sys.exit(code)


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
@click.option("--no-quantize", is_flag=True, help="Stop at the optimized fp32 model.")
@click.option("--trust-pickle", is_flag=True, help="Allow loading a fully pickled model (runs code from the file).")
@click.option("-o", "--output", "out_dir", default="edgeport-out", show_default=True, metavar="OUTDIR")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo"]), default="auto", show_default=True)
@click.option("--quant-format", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--calib-samples", type=int, default=256, show_default=True, help="Calibration samples used at most.")
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales (default: per-channel).")
@click.option("--reduce-range/--no-reduce-range", default=None, help="7-bit weights; default: chosen from the target CPU.")
@click.option("--op-types", metavar="A,B", help="Op types to quantize; default: chosen from the model family.")
@click.option("--exclude-op-types", metavar="A,B", help="Op types to keep in float.")
@click.option("--exclude-nodes", metavar="A,B", help="Node names to keep in float.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", metavar="DIR", help="Where calibration ranges are cached (default ~/.cache/edgeport).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json to stdout, nothing else.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
def export_command(model: str, **opts: Any) -> None:
    """Export MODEL to ONNX, optimize it and quantize it to int8.

    MODEL is package.module:attr (an nn.Module or a zero-argument factory), a TorchScript file,
    a torch.export .pt2 file, or an .onnx file. Writes OUTDIR/model.onnx, model.fp32.onnx,
    report.json, report.md and manifest.json.
    """

    def action() -> int:
        from edgeport.api import export
        from edgeport.passes.export_onnx import OnnxExportConfig
        from edgeport.passes.quantize_static import StaticInt8Config
        from edgeport.progress import TerminalProgress
        from edgeport.reports import format_table, summary_rows

        quiet = opts["quiet"] or opts["as_json"]
        quant_config = StaticInt8Config(
            format=opts["quant_format"],
            per_channel=not opts["per_tensor"],
            reduce_range=opts["reduce_range"],
            calibration_method=opts["calib_method"],
            calibration_samples=opts["calib_samples"],
            op_types=_split(opts["op_types"]),
            exclude_op_types=_split(opts["exclude_op_types"]) or (),
            exclude_nodes=_split(opts["exclude_nodes"]) or (),
        )
        result = export(
            model,
            out_dir=opts["out_dir"],
            inputs=opts["inputs"] or None,
            weights=opts["weights"],
            calib=opts["calib"],
            eval=opts["eval_data"],
            quantize=not opts["no_quantize"],
            trust_pickle=opts["trust_pickle"],
            export_config=OnnxExportConfig(opset=opts["opset"], exporter=opts["exporter"]),
            quant_config=quant_config,
            seed=opts["seed"],
            cache_dir=opts["cache_dir"],
            progress=TerminalProgress(enabled=False if quiet else None),
        )
        if opts["as_json"]:
            click.echo(json.dumps(result.report, indent=2, default=str))
        elif not quiet:
            click.echo(format_table(summary_rows(result.report)))
            summary = result.report["summary"]
            if "size_ratio" in summary:
                click.echo(f"int8 model is {summary['size_ratio']:.1%} of fp32 ({summary['int8_bytes'] / 1e6:.2f} MB)")
            for warning in result.report["warnings"]:
                click.echo(f"warning: {warning}", err=True)
            click.echo(f"wrote {result.out_dir}")
        return result.exit_code

    _run(action)


def main() -> None:
    cli(prog_name="edgeport")


if __name__ == "__main__":
    main()
