"""Latency estimate for a target: a roofline per node, summed over the graph, labelled as an
estimate and never shown as a measurement.

Each node takes the longer of its compute time (MACs, or elements for nodes that are not
MAC-bound, at its op class's rate and precision) and its memory time (bytes at their width in
memory against the bandwidth), plus a fixed cost per node. The rates are the device's own where
`edgeport profiles calibrate` measured them (the profile's [measured] table, with the error that
calibration measured), and the spec-sheet peaks times the assumed efficiencies below otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgeport.device_profiles.schema import Hardware, Measured
from edgeport.runtimes.graph_cost import GraphCost, NodeCost

# What kernels reach of a spec-sheet peak where nothing was measured: stated in every report.
# Depthwise convolutions do little work per byte and vectorize poorly; elementwise and data
# movement are priced by elements at a small share of the peak, or by their bytes.
ASSUMED_EFFICIENCY = {"conv": 0.5, "depthwise": 0.1, "matmul": 0.5, "recurrent": 0.1, "elementwise": 0.05, "data_movement": 0.05}
ASSUMED_BANDWIDTH_EFFICIENCY = 0.6
ASSUMED_NODE_OVERHEAD_US = 2.0


@dataclass(frozen=True)
class Rates:
    gops: dict[str, float]  # "<op class>_<precision>" -> G ops (or elements) per second
    bandwidth_gbs: float  # weights stream from memory at this rate
    activation_bandwidth_gbs: float  # activations, a few MB at a time, move through cache at this one
    node_overhead_us: float
    mac_node_overhead_us: float  # a Conv/MatMul wakes the thread pool: more than an elementwise node
    basis: str
    error_band: dict[str, Any] | None  # measured |error| of this estimator on this device, or None

    def rate(self, op_class: str, precision: str) -> float:
        # int8 where only fp32 was measured (or the reverse): the other precision's rate
        return self.gops.get(f"{op_class}_{precision}") or self.gops.get(f"{op_class}_fp32") or self.gops.get(f"{op_class}_int8") or 1.0


def rates_for(hardware: Hardware, measured: Measured | None) -> Rates:
    assumed = {f"{c}_{p}": (hardware.peak_gops_fp32 if p == "fp32" else hardware.peak_gops_int8) * e
               for c, e in ASSUMED_EFFICIENCY.items() for p in ("fp32", "int8")}
    if measured is not None:
        band = None
        if measured.estimate_error_median is not None:
            band = {"median_abs_error": measured.estimate_error_median, "max_abs_error": measured.estimate_error_max,
                    "models": measured.estimate_error_models, "source": measured.source}
        # a class the table lacks (a hand-written profile) falls back to the peaks' assumption, not to 1 GOPS
        gops = {**{k: v for k, v in assumed.items() if k.rsplit("_", 1)[0] + "_fp32" not in measured.gops}, **measured.gops}
        return Rates(gops, measured.bandwidth_gbs, measured.activation_bandwidth_gbs or measured.bandwidth_gbs,
                     measured.node_overhead_us, measured.mac_node_overhead_us if measured.mac_node_overhead_us is not None else measured.node_overhead_us,
                     f"rates measured on the device at {measured.threads} threads ({measured.source})", band)
    gops = assumed
    dram = hardware.mem_bandwidth_gbs * ASSUMED_BANDWIDTH_EFFICIENCY
    return Rates(gops, dram, dram, ASSUMED_NODE_OVERHEAD_US, ASSUMED_NODE_OVERHEAD_US,  # nothing measured: no cache assumed either
                 f"spec-sheet peaks at assumed efficiencies ({', '.join(f'{k} {v:.0%}' for k, v in ASSUMED_EFFICIENCY.items())}), "
                 f"{ASSUMED_BANDWIDTH_EFFICIENCY:.0%} of peak bandwidth, {ASSUMED_NODE_OVERHEAD_US} us per node", None)


def estimate_latency_ms(cost: GraphCost, rates: Rates, cpu_rates: Rates | None = None, cpu_ops: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The summed per-node roofline; {"refused": reason} where the counts cannot carry one. Nodes
    whose op type is in ``cpu_ops`` (the accelerator does not take them) are priced at ``cpu_rates``."""
    if cost.refused:
        return {"refused": cost.refused, "basis": rates.basis}
    compute_s = memory_s = overhead_s = total_s = cpu_s = 0.0
    by_class: dict[str, float] = {}
    for node in cost.nodes:
        on_cpu = cpu_rates is not None and node.op_type in cpu_ops
        node_compute, node_memory, overhead = node_seconds(node, cpu_rates if on_cpu else rates)
        node_s = (max(node_compute, node_memory) + overhead) * node.repeats
        compute_s += node_compute * node.repeats
        memory_s += node_memory * node.repeats
        overhead_s += overhead * node.repeats
        total_s += node_s
        cpu_s += node_s if on_cpu else 0.0
        by_class[node.op_class] = by_class.get(node.op_class, 0.0) + node_s
    return {
        "latency_ms": round(total_s * 1e3, 4),
        "bound": "compute" if compute_s >= memory_s else "memory",
        "compute_ms": round(compute_s * 1e3, 4),
        "memory_ms": round(memory_s * 1e3, 4),
        "overhead_ms": round(overhead_s * 1e3, 4),
        "by_op_class_ms": {k: round(v * 1e3, 4) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
        "assumptions": rates.basis,
        **({"cpu_fallback_ms": round(cpu_s * 1e3, 4), "cpu_fallback_ops": sorted(cpu_ops)} if cpu_rates is not None and cpu_ops else {}),
        "error_band": rates.error_band,
        **({"notes": cost.notes} if cost.notes else {}),
    }


def cpu_rates_for(hardware: Hardware) -> Rates | None:
    """Rates of the CPU beside an accelerator, from the profile's CPU peaks; None where it gives none."""
    if hardware.cpu_peak_gops_fp32 is None:
        return None
    cpu = replace(hardware, peak_gops_fp32=hardware.cpu_peak_gops_fp32, peak_gops_int8=hardware.cpu_peak_gops_int8 or hardware.cpu_peak_gops_fp32)
    return rates_for(cpu, None)


def node_seconds(node: NodeCost, rates: Rates) -> tuple[float, float, float]:
    """One run of ``node``: its compute time, its memory time, and its fixed cost."""
    work = 2 * node.macs if node.macs else node.elements
    compute = work / (rates.rate(node.op_class, node.precision) * 1e9)
    memory = node.bytes_moved / (rates.activation_bandwidth_gbs * 1e9) + node.weight_bytes / (rates.bandwidth_gbs * 1e9)
    return compute, memory, (rates.mac_node_overhead_us if node.macs else rates.node_overhead_us) * 1e-6


def band_text(estimate: dict[str, Any]) -> str:
    """The estimate's error band in words, for every place that prints an estimate."""
    band = estimate.get("error_band")
    if not band:
        return "error band unmeasured (run 'edgeport profiles calibrate' on the device for one)"
    return f"measured error on this device: median {band['median_abs_error']:.0%}, max {band['max_abs_error']:.0%} over {band['models']} models"
