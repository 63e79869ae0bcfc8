"""Build ONNX Runtime sessions and run them over batches, failing loudly with a clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from edgeport.errors import DataError, ModelLoadError, UsageError, first_line
from edgeport.runtimes import ep_plugins

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(
    *, intra_op_threads: int | None = None, optimization: str = "all", optimized_path: Path | None = None, external_data: bool = False
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: failures reach the user as exceptions, in one line
    if optimization not in _LEVELS:
        raise UsageError(f"graph optimization level '{optimization}' is unknown", fix=f"use one of {', '.join(_LEVELS)}")
    options.graph_optimization_level = _LEVELS[optimization]
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        if external_data:  # else the optimized file would point at the source's side file, relative to a folder it is not in
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{Path(optimized_path).name}.data")
    return options


def create_session(
    path: Path | str,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    *,
    intra_op_threads: int | None = None,
    optimization: str = "all",
    optimized_path: Path | None = None,
    external_data: bool = False,
    provider_options: dict[str, dict[str, str]] | None = None,
    cpu_fallback: bool = True,
) -> ort.InferenceSession:
    """A session on the given providers, in order, each with its ``provider_options``. A missing
    provider is an error listing those available. Without ``cpu_fallback`` (and no CPU provider
    listed), ORT refuses a model the providers cannot run whole."""
    available = ep_plugins.available_providers(ort)
    missing = [p for p in providers if p not in available]
    if missing:
        problem = ep_plugins.plugin_problem(missing[0])
        raise UsageError(
            problem or f"execution provider '{missing[0]}' is not available in this onnxruntime build (available: {', '.join(available)})",
            fix="install the onnxruntime package that ships it (QNN: pip install 'edgeport[qnn]'), or pick a profile for this machine",
        )
    options = session_options(intra_op_threads=intra_op_threads, optimization=optimization, optimized_path=optimized_path, external_data=external_data)
    if not cpu_fallback and "CPUExecutionProvider" not in providers:
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        return ep_plugins.create_session(ort, str(path), options, list(providers), provider_options)
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime cannot load '{path}' on {', '.join(providers)}: {first_line(exc)[:300]}",
                             fix="check the file is a valid ONNX model for this onnxruntime version") from exc


def run_session(session: ort.InferenceSession, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    wanted = {i.name for i in session.get_inputs()}
    missing = wanted - set(inputs)
    if missing:
        raise DataError(f"data has no array for model input '{sorted(missing)[0]}'", fix=f"key the data by the model's inputs {sorted(wanted)}")
    feed = {name: array for name, array in inputs.items() if name in wanted}
    try:
        return session.run(None, feed)
    except Exception as exc:
        first = first_line(exc)
        raise DataError(f"ONNX Runtime rejected the input data: {first[:300]}", fix="check the data's shapes and dtypes against the model's inputs") from exc

