"""Measure what this machine's ONNX Runtime CPU kernels reach, per op class and precision, for the
latency estimator (`edgeport profiles calibrate`). Torch-free: the micro-benchmarks and the check
models are built with onnx.helper, so a device with only onnxruntime can calibrate itself.

Each op class runs one representative node at fp32 and as a QDQ int8 node (which ONNX Runtime
fuses into its int8 kernel). Then a few small networks, priced by the estimator with the measured
rates and timed for real, give the estimator's error band on this machine.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeport.device_profiles.schema import Hardware, Measured
from edgeport.runtimes.estimate import estimate_latency_ms, rates_for
from edgeport.runtimes.device_job import time_entries
from edgeport.runtimes.graph_cost import OP_CLASSES, graph_cost
from edgeport.specs import TensorSpec

OPSET = 17


@dataclass
class _Net:
    """A graph under construction, with int8 weights and Q/DQ pairs where asked."""

    int8: bool
    nodes: list[onnx.NodeProto]
    initializers: list[onnx.TensorProto]
    count: int = 0
    dequantized: set[str] = field(default_factory=set)  # already read through Q/DQ: not quantized twice

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def constant(self, value: np.ndarray) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def activation(self, x: str, scale: float = 0.05, zero_point: int = 128) -> str:
        """x through QuantizeLinear/DequantizeLinear (uint8) when int8: where QDQ kernels fuse. After
        a Relu the zero point is 0, as a calibrated range [0, max] gives, so ORT drops the Relu."""
        if not self.int8 or x in self.dequantized:
            return x
        s, z = self.constant(np.array(scale, np.float32)), self.constant(np.array(zero_point, np.uint8))
        q, dq = self.name("q"), self.name("dq")
        self.nodes += [helper.make_node("QuantizeLinear", [x, s, z], [q]), helper.make_node("DequantizeLinear", [q, s, z], [dq])]
        self.dequantized.add(dq)
        return dq

    def weight(self, shape: tuple[int, ...], rng: np.random.Generator) -> str:
        value = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if not self.int8:
            return self.constant(value)
        scale = float(np.abs(value).max() / 127)
        q = self.constant(np.clip(np.rint(value / scale), -127, 127).astype(np.int8))
        dq = self.name("w")
        self.nodes.append(helper.make_node("DequantizeLinear", [q, self.constant(np.array(scale, np.float32)),
                                                                 self.constant(np.array(0, np.int8))], [dq]))
        return dq

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, rng: np.random.Generator, k: int = 3, group: int = 1, relu: bool = False) -> str:
        # as ONNX Runtime's quantizer lays it out: Conv, its Relu, then the output's Q/DQ
        y = self.op("Conv", [self.activation(x), self.weight((cout, cin // group, k, k), rng)], pads=[k // 2] * 4, group=group)
        return self.activation(self.op("Relu", [y]), zero_point=0) if relu else self.activation(y)

    def matmul(self, x: str, cin: int, cout: int, rng: np.random.Generator) -> str:
        return self.activation(self.op("MatMul", [self.activation(x), self.weight((cin, cout), rng)]))

    def save(self, x_shape: tuple[int, ...], y: str, path: Path) -> Path:
        graph = helper.make_graph(self.nodes, "calibration", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], self.initializers)
        # IR 8: readable by the older onnxruntime a device may have
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8), str(path))
        return path


# Convolutions reach different rates at different shapes: a CNN's early, wide-map layers and its
# late, many-channel ones. Their time-weighted rate over three ResNet-like stages stands for all.
CONV_STAGES = ((64, 56), (128, 28), (256, 14))
# MatMuls likewise: a long sequence through a wide layer, and the short sequences of an edge
# transformer (32 tokens), whose small GEMMs run well below a large one's rate.
MATMUL_STAGES = ((128, 768, 768), (32, 384, 384), (32, 384, 1536))
VARIANTS = {"conv": len(CONV_STAGES), "matmul": len(MATMUL_STAGES)}


def _one_node(kind: str, int8: bool, variant: int = 0) -> tuple[_Net, tuple[int, ...], str]:
    rng = np.random.default_rng(0)
    net = _Net(int8, [], [])
    if kind == "conv":
        channels, size = CONV_STAGES[variant]
        shape = (1, channels, size, size)
        return net, shape, net.conv("x", channels, channels, rng)
    if kind == "depthwise":
        shape = (1, 256, 56, 56)
        return net, shape, net.conv("x", 256, 256, rng, group=256)
    if kind == "matmul":
        rows, inner, outer = MATMUL_STAGES[variant]
        shape = (1, rows, inner)
        return net, shape, net.matmul("x", inner, outer, rng)
    if kind == "recurrent":  # ONNX Runtime has no int8 GRU: measured at fp32 only
        shape = (50, 1, 64)
        out = net.name("gru")
        net.nodes.append(helper.make_node("GRU", ["x", net.weight((1, 384, 64), rng), net.weight((1, 384, 128), rng)], [out],
                                          hidden_size=128))
        return net, shape, out
    shape = (1, 256, 56, 56)
    if kind == "elementwise":
        x = net.activation("x")
        return net, shape, net.activation(net.op("Add", [x, x]))
    return net, shape, net.op("Transpose", ["x"], perm=[0, 2, 3, 1])  # data movement


def _check_networks() -> dict[str, Callable[[_Net], tuple[tuple[int, ...], str]]]:
    """Small networks unlike the single nodes: several op classes, small and large tensors."""
    def cnn(net: _Net):
        rng = np.random.default_rng(1)
        x = net.conv("x", 3, 32, rng, relu=True)
        for _ in range(2):
            y = net.conv(x, 32, 32, rng, relu=True)
            x = net.activation(net.op("Relu", [net.op("Add", [x, net.conv(y, 32, 32, rng)])]), zero_point=0)
        return (1, 3, 64, 64), net.op("GlobalAveragePool", [x])

    def separable(net: _Net):
        rng = np.random.default_rng(2)
        x = net.conv("x", 3, 48, rng, relu=True)
        for _ in range(3):
            x = net.conv(x, 48, 48, rng, group=48, relu=True)
            x = net.conv(x, 48, 48, rng, k=1, relu=True)
        return (1, 3, 96, 96), x

    def mlp(net: _Net):
        rng = np.random.default_rng(3)
        x = "x"
        for _ in range(2):
            h = net.op("Relu", [net.matmul(x, 256, 1024, rng)])
            x = net.activation(net.op("Add", [x, net.matmul(h, 1024, 256, rng)]))
        return (1, 64, 256), x

    return {"cnn": cnn, "separable": separable, "mlp": mlp}


Timer = Callable[[list[dict[str, Any]], int], dict[str, float]]


local_timer: Timer = time_entries  # on this machine; RemoteDevice.timer runs the same on a device


def calibrate_host(threads: int, hardware: Hardware, source: str, progress: Callable[[str], None] = lambda _: None,
                   timer: Timer = local_timer) -> Measured:
    """The measured rates of the machine ``timer`` runs on (this one, or a device over SSH), and
    the estimator's error with them on the check networks. The models are built here, so the
    device needs only onnxruntime and numpy."""
    with tempfile.TemporaryDirectory(prefix="edgeport-calibrate-") as tmp:
        folder = Path(tmp)
        singles: dict[str, tuple[Path, tuple[int, ...]]] = {}  # "<class>_<precision>@<variant>"
        for kind in OP_CLASSES:
            for precision in ("fp32", "int8") if kind not in ("recurrent", "data_movement") else ("fp32",):
                for variant in range(VARIANTS.get(kind, 1)):
                    net, shape, y = _one_node(kind, precision == "int8", variant)
                    singles[f"{kind}_{precision}@{variant}"] = (net.save(shape, y, folder / f"{kind}-{precision}-{variant}.onnx"), shape)
        checks: dict[str, tuple[Path, tuple[int, ...]]] = {}
        for name, build in _check_networks().items():
            for int8 in (False, True):
                net = _Net(int8, [], [])
                shape, y = build(net)
                checks[f"{name}_{'int8' if int8 else 'fp32'}"] = (net.save(shape, y, folder / f"check-{name}-{int8}.onnx"), shape)
        fixed = {"overhead": _node_overhead_model(folder), "mac_overhead": _mac_overhead_model(folder), "bandwidth": _bandwidth_model(folder)}
        entries = [{"key": k, "path": p, "shape": list(sh), "repeats": 3} for k, (p, sh) in singles.items()]
        entries += [{"key": k, "path": p, "shape": list(sh), "repeats": 1} for k, (p, sh) in {**fixed, **checks}.items()]
        progress(f"timing {len(entries)} calibration models at {threads} threads")
        seconds = timer(entries, threads)
        overhead = seconds["overhead"] / OVERHEAD_CHAIN
        work: dict[str, float] = {}
        spent: dict[str, float] = {}
        for key, (path, shape) in singles.items():
            rate_key = key.split("@")[0]
            kind = rate_key.rsplit("_", 1)[0]
            cost = graph_cost(str(path), [TensorSpec("x", shape)])
            work[rate_key] = work.get(rate_key, 0.0) + sum(2 * n.macs if n.macs else n.elements for n in cost.nodes if n.op_class == kind)
            spent[rate_key] = spent.get(rate_key, 0.0) + max(seconds[key] - overhead, 1e-7)
        gops = {k: round(work[k] / spent[k] / 1e9, 3) for k in work}
        speedup = {k: round(gops[f"{k}_int8"] / gops[f"{k}_fp32"], 3) for k in ("conv", "depthwise", "matmul", "elementwise")}
        mac_overhead = max(seconds["mac_overhead"] / MAC_OVERHEAD_CHAIN - MAC_OVERHEAD_FLOP / (gops["conv_fp32"] * 1e9), 0.0)
        rates = dict(
            threads=threads, gops=gops, bandwidth_gbs=round(BANDWIDTH_BYTES / seconds["bandwidth"] / 1e9, 3),
            node_overhead_us=round(overhead * 1e6, 3), mac_node_overhead_us=round(mac_overhead * 1e6, 3), int8_speedup=speedup,
            # activations a few MB large stay in cache from one node to the next: their bandwidth is the
            # elementwise benchmark's (one read, one write of each element), not a DRAM stream's
            activation_bandwidth_gbs=round(gops["elementwise_fp32"] * 8, 3),
        )
        errors = []
        for key, (path, shape) in checks.items():
            predicted = estimate_latency_ms(graph_cost(str(path), [TensorSpec("x", shape)]), rates_for(hardware, Measured(**rates)))["latency_ms"]
            errors.append(abs(predicted / (seconds[key] * 1e3) - 1))
    return Measured(**rates, estimate_error_median=round(statistics.median(errors), 3), estimate_error_max=round(max(errors), 3),
                    estimate_error_models=len(errors), source=f"{source}; error band from {len(errors)} check networks (3 nets, fp32 and int8)")


OVERHEAD_CHAIN = 64
MAC_OVERHEAD_CHAIN = 32
MAC_OVERHEAD_FLOP = 2 * 16 * 16 * 9 * 64  # one 16-channel 3x3 conv on 8x8
BANDWIDTH_SHAPE = (16, 1024, 1024)
BANDWIDTH_BYTES = 2 * int(np.prod(BANDWIDTH_SHAPE)) * 4  # one read, one write of 64 MB


def _mac_overhead_model(folder: Path) -> tuple[Path, tuple[int, ...]]:
    """What a Conv costs beyond its work: with more than one thread each one wakes the pool, which a
    small network's many small nodes feel. A chain of small 3x3 convs."""
    rng = np.random.default_rng(4)
    net = _Net(False, [], [])
    weight = net.constant((rng.standard_normal((16, 16, 3, 3)) * 0.05).astype(np.float32))
    x = "x"
    for _ in range(MAC_OVERHEAD_CHAIN):
        x = net.op("Conv", [x, weight], pads=[1, 1, 1, 1])
    shape = (1, 16, 8, 8)
    return net.save(shape, x, folder / "mac-overhead.onnx"), shape


def _node_overhead_model(folder: Path) -> tuple[Path, tuple[int, ...]]:
    """What a node costs beyond its work: a chain of Relus on a few elements."""
    net = _Net(False, [], [])
    x = "x"
    for _ in range(OVERHEAD_CHAIN):
        x = net.op("Relu", [x])
    return net.save((1, 8), x, folder / "overhead.onnx"), (1, 8)


def _bandwidth_model(folder: Path) -> tuple[Path, tuple[int, ...]]:
    """A large Add (x + x): one read and one write of 64 MB, from and to memory."""
    net = _Net(False, [], [])
    return net.save(BANDWIDTH_SHAPE, net.op("Add", ["x", "x"]), folder / "bandwidth.onnx"), BANDWIDTH_SHAPE
