import pytest

from edgeport.device_profiles import builtin_names, check_profile, load_profile
from edgeport.errors import ProfileError

REQUIRED_TARGETS = {"raspberry-pi-4", "raspberry-pi-5", "android-nnapi", "android-xnnpack", "iphone-coreml",
                    "jetson-orin-nano", "x86-server-vnni", "ci-x86-avx2", "openvino-cpu"}


def test_builtins_cover_the_targets_and_all_load():
    assert REQUIRED_TARGETS <= set(builtin_names())
    for name in builtin_names():
        profile = load_profile(name)
        assert profile.name == name
        assert all(profile.sources[k] for k in ("cores", "memory_mb", "peak_gops_fp32", "peak_gops_int8", "mem_bandwidth_gbs"))


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ProfileError, match="did you mean 'raspberry-pi-4' or 'raspberry-pi-5'"):
        load_profile("raspbery-pi")


VALID = (load_profile("ci-x86-avx2").path)


def _variant(tmp_path, old: str, new: str):
    text = open(VALID).read()
    assert old in text, old
    path = tmp_path / "p.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('arch = "x86_64"', 'arch = "sparc"', "hardware.arch: 'sparc' is not one of"),
        ("cores = 2\n", 'cores = "two"\n', "hardware.cores: must be int, not str"),
        ("memory_mb = 7168", "memory_mb = -1", "hardware.memory_mb: must be positive"),
        ("peak_gops_fp32 = 160.0", "peak_gops_fp3 = 160.0", "hardware.peak_gops_fp3: unknown key; did you mean 'peak_gops_fp32'?"),
        ("mem_bandwidth_gbs = 20.0\n", "\n", "hardware.mem_bandwidth_gbs: is required"),
        ('execution_providers = ["CPUExecutionProvider"]', 'execution_providers = ["CpuExecutionProvider"]', "did you mean 'CPUExecutionProvider'?"),
        ("intra_op_threads = 2", "intra_op_threads = 0", "runtime.intra_op_threads: must be between 1 and 256"),
        ("opset_max = 21", "opset_max = 9", "opset range 13..9 is impossible"),
        ('format = "qdq"', 'format = "int4"', "runtime.quantization.format: 'int4' is not one of"),
        ("per_channel = true", 'per_channel = "yes"', "runtime.quantization.per_channel: must be bool"),
        ("latency_p95_ms = 50.0", "latency_p95_ms = 0", "budgets.latency_p95_ms: must be positive"),
        ("batch = 1", "batch = 0", "budgets.batch: must be at least 1"),
        ("accuracy_drop_max = 0.01", "accuracy_drop_max = 2", "budgets.accuracy_drop_max: must be within [0, 1]"),
        ("top1_agreement_min = 0.98", "top1_agreement_minimum = 0.98", "budgets.parity.top1_agreement_minimum: unknown key; did you mean 'top1_agreement_min'?"),
        ("cosine_min = 0.99", "cosine_min = 1.5", "budgets.parity.cosine_min: must be within [-1, 1]"),
        ('peak_gops_int8 = "derived', 'peak_gops_int = "derived', "sources.peak_gops_int8: hardware.peak_gops_int8 needs a source"),
        ('name = "ci-x86-avx2"', 'name = ""', "name: must not be empty"),
        ("mem_bandwidth_gbs = 20.0\n", "mem_bandwidth_gbs = 20.0\ncpu_peak_gops_fp32 = 50.0\n",
         "sources.cpu_peak_gops_fp32: hardware.cpu_peak_gops_fp32 needs a source"),
        ("mem_bandwidth_gbs = 20.0\n", 'mem_bandwidth_gbs = 20.0\ncpu_model_pattern = "EPYC("\n', "hardware.cpu_model_pattern: is not a regular expression"),
    ],
)
def test_each_wrong_field_is_named_with_the_file(tmp_path, old, new, expected):
    path = _variant(tmp_path, old, new)
    profile, problems = check_profile(path)
    assert profile is None
    assert any(expected in p and str(path) in p for p in problems), problems
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert "\n" not in str(info.value)


def test_not_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = [unclosed")
    _, problems = check_profile(path)
    assert "not valid TOML" in problems[0]


def test_missing_file():
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("no/such/profile.toml")


def test_every_budget_limit_has_one_row_and_a_reading():
    """A Budgets field that holds a limit is judged only through device_profiles.budgets.BUDGETS:
    adding a budget without its row (direction, unit, basis rule) fails here, not silently as a
    floor, and so does a row whose measurement the Measurement does not carry."""
    import dataclasses

    from edgeport.device_profiles.budgets import BUDGETS
    from edgeport.device_profiles.schema import Budgets, ParityBudget
    from edgeport.runtimes.measure import Measurement

    limits = {f"budgets.{f.name}" for f in dataclasses.fields(Budgets) if f.name not in ("batch", "dims", "parity")}
    limits |= {f"budgets.parity.{f.name}" for f in dataclasses.fields(ParityBudget)}
    fields = [spec.field for spec in BUDGETS.values()]
    assert len(fields) == len(set(fields)) and limits <= set(fields)
    readings = {f.name for f in dataclasses.fields(Measurement)}
    assert {spec.measures for spec in BUDGETS.values()} <= readings
    profile = load_profile("raspberry-pi-4")
    for spec in BUDGETS.values():
        spec.limit(profile)  # every path resolves on a real profile


def test_judging_follows_the_declared_direction_and_basis_rule():
    from edgeport.device_profiles.budgets import BUDGETS, ESTIMATE, HOST, TARGET, Reading
    from edgeport.device_profiles.verdict import judge

    floor = judge(BUDGETS["provider_coverage_min"], 0.95, [Reading(0.9, HOST)])  # a floor whose name ends in _min
    ceiling = judge(BUDGETS["accuracy_drop_max"], 0.01, [Reading(0.02, HOST)])
    assert floor.status == "fail" and floor.margin == -0.05 and "is below" in floor.describe()
    assert ceiling.status == "fail" and ceiling.margin == -0.01 and "exceeds" in ceiling.describe()
    assert judge(BUDGETS["parity.sqnr_db_min"], 25.0, [Reading(30.0, HOST)]).describe().startswith("parity.sqnr_db_min: 30 dB >= 25 dB")
    latency = BUDGETS["latency_p95_ms"]
    # off target, another machine's timing never judges latency: the estimate for the target does
    off = judge(latency, 10.0, [Reading(5.0, HOST, "this host"), Reading(12.0, ESTIMATE, "estimate")])
    assert (off.status, off.measured, off.basis) == ("fail", 12.0, "estimate")
    on = judge(latency, 10.0, [Reading(5.0, TARGET, "target"), Reading(12.0, ESTIMATE, "estimate")])
    assert (on.status, on.measured, on.basis) == ("pass", 5.0, "target")
    unpriced = judge(latency, 10.0, [Reading(5.0, HOST), Reading(None, ESTIMATE, missing="no rates for this op")])
    assert unpriced.status == "skipped" and unpriced.detail == "no rates for this op"
    no_session = judge(BUDGETS["peak_memory_mb"], 512.0, [Reading(None, HOST, "this host", missing="no session could run")])
    assert (no_session.status, no_session.basis, no_session.detail) == ("skipped", "this host", "no session could run")
    assert judge(latency, None, [Reading(5.0, TARGET)]) is None  # the profile sets no such budget


def test_device_memory_and_storage_bound_every_profile():
    """hardware.memory_mb and storage_mb are budgets too: a model that needs more than the device
    has fails there whatever its own budgets say."""
    import dataclasses

    from edgeport.device_profiles.budgets import HOST, STATIC, Reading
    from edgeport.device_profiles.verdict import judge_budgets
    from edgeport.runtimes.measure import Measurement

    profile = load_profile("raspberry-pi-4")
    profile = dataclasses.replace(profile, budgets=dataclasses.replace(profile.budgets, peak_memory_mb=None, model_size_mb=None))
    huge = Measurement(False, peak_memory_mb=(Reading(profile.hardware.memory_mb + 1.0, HOST),),
                       model_size_mb=(Reading(profile.hardware.storage_mb * 2.0, STATIC),))
    results = {r.name: r for r in judge_budgets(profile, huge)}
    assert results["device_memory_mb"].status == "fail" and results["device_storage_mb"].status == "fail"
    assert "peak_memory_mb" not in results and "model_size_mb" not in results
    small = Measurement(False, peak_memory_mb=(Reading(50.0, HOST),), model_size_mb=(Reading(1.0, STATIC),))
    assert {r.name: r.status for r in judge_budgets(profile, small)}["device_memory_mb"] == "pass"
