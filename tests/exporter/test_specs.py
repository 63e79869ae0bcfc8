import pytest

from edgeport.errors import UsageError
from edgeport.specs import TensorSpec, parse_input_spec


def test_parse_named_dims_and_dtype():
    spec = parse_input_spec("input_ids:batchxsequence:int64")
    assert spec == TensorSpec("input_ids", ("batch", "sequence"), "int64")
    assert spec.dynamic_axes == {0: "batch", 1: "sequence"}
    assert spec.matches((3, 17)) and not spec.matches((3, 17, 1))


def test_parse_default_dtype_and_fixed_dims():
    spec = parse_input_spec("image:1x3x224x224")
    assert spec.shape == (1, 3, 224, 224) and spec.dtype == "float32"
    assert not spec.matches((2, 3, 224, 224))


@pytest.mark.parametrize("text", ["image", "image:", "image:1x3x-2", "image:1x3:float99", ":1x3", "a:b:c:d", "image:1x0x3"])
def test_bad_specs_name_the_problem(text):
    with pytest.raises(UsageError) as info:
        parse_input_spec(text)
    assert "Fix:" in str(info.value) and "\n" not in str(info.value)


def test_roundtrip_dict():
    spec = parse_input_spec("x:batchx4:float16")
    assert TensorSpec.from_dict(spec.to_dict()) == spec
