"""The compression commands, distill and prune: thin layers over ``edgeport.compress``."""

from __future__ import annotations

from typing import Any

import click

from edgeport.cli_common import run_action, split_list, with_options
from edgeport.outputs import dumps_strict


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


@click.command("distill")
@click.option("--teacher", required=True, metavar="MODEL", help="The trained model to learn from.")
@click.option("--teacher-weights", metavar="FILE")
@click.option("--student", required=True, metavar="MODEL", help="The smaller model to train (same output layout).")
@click.option("--student-weights", metavar="FILE")
@click.option("--data", required=True, metavar="DATA", help="Training samples (labels optional).")
@click.option("--val-data", metavar="DATA", help="Validation samples for early stopping (default: 10% of --data).")
@click.option("--eval", "eval_data", metavar="DATA", help="Held-out data: fidelity to the reference, and accuracy when it has labels.")
@click.option("--input", "inputs", multiple=True, metavar="NAME:SHAPE[:DTYPE]")
@with_options(_distill_options)
@click.option("--hint", "hints", multiple=True, metavar="T_LAYER:S_LAYER", help="Feature hint from a teacher layer to a student layer.")
@click.option("--hint-weight", type=float, default=1.0, show_default=True)
@click.option("--offline", is_flag=True, help="Store the teacher's outputs once and reuse them on later runs.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint of an interrupted run into the same OUTDIR.")
@with_options(_compress_common_options)
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

    run_action(action)


@click.command("prune")
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
@with_options(_compress_common_options)
def prune_command(model: str, **opts: Any) -> None:
    """Prune MODEL (magnitude, channels), factorize it (lowrank) or share its weights (share); writes OUTDIR/model.pt2 and report.json.

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
            round_to=opts["round_to"], ignore=split_list(opts["ignore"]) or (), layers=split_list(opts["layers"]), energy=opts["energy"],
            eval_data=opts["eval_data"], trust_pickle=opts["trust_pickle"], seed=opts["seed"], cache_dir=opts["cache_dir"],
            progress=TerminalProgress(enabled=False if quiet else None), force=opts["force"], min_fidelity=opts["min_fidelity"],
            method_options={"clusters": opts["clusters"]} if opts["clusters"] is not None else None,
        )
        _common_compress_output(result, opts["as_json"], quiet)
        return result.exit_code

    run_action(action)
