"""The REST transport's JSON codec: TF Serving's JSON <-> tensors, examples and answers.

TF Serving's `util/json_tensor.cc` in Python: parse a body with RapidJSON's error
messages, turn row "instances" and columnar "inputs" into arrays typed by the
signature, {"b64": ...} into bytes (strict base64, through serving.images), JSON
examples into tf.Examples, and outputs back into JSON: {"predictions"} for row
requests, {"outputs"} for columnar ones, outputs named *_bytes as b64, floats as
their shortest round-tripping decimal, NaN/Infinity as bare tokens.

About 650 lines, one concern: it mirrors one file of TF Serving, whose error
messages clients match on; split in two, both halves would share every helper.

Layer: REST transport (rest.py and feedback.py use it); pure functions, no HTTP.
Imports serving.contract, errors, images, tensors, and handlers for the
instance limit's wording.
"""
from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, Mapping

import numpy as np
from google.protobuf import json_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    regression_pb2,
)

from serving import contract, errors, images
from serving.handlers import too_many_instances
from serving.tensors import NUMPY_NAMES, NUMPY_TYPES, as_text, dtype_name

# json_tensor.cc: kMaxJsonDebugStringBytes.
_DUMP_LIMIT = 256
# Deeper JSON tensors than this are refused outright (no real model has rank 32).
_MAX_JSON_RANK = 32
# json_tensor.cc AddValueToTensor has no case for these: UNIMPLEMENTED over REST (gRPC takes them).
_NO_JSON = {types_pb2.DT_HALF, types_pb2.DT_UINT16, types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128,
            types_pb2.DT_BFLOAT16}

_JSON_ERRORS = {
    # Python's json messages -> RapidJSON's (GetParseError_En), for the common cases.
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}
_DECODER = json.JSONDecoder()


# Bytes that are not UTF-8, as the surrogateescape decoding below leaves them.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
# One escape in a JSON string: \uXXXX (group 1), or a backslash and the character it escapes.
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def parse_json(body: bytes, *, trailing: bool = True, lone_surrogates: bool = False) -> Any:
    """ParseJson: the first JSON value of the body, with RapidJSON's error messages.

    With `trailing`, bytes after that value are ignored; without, only whitespace may follow.

    Strings must be Unicode text: bytes that are not UTF-8 are refused ("Invalid encoding
    in string.", where TF Serving would pass them on as they are), and so are \\u escapes of
    lone surrogates unless `lone_surrogates` ("The surrogate pair in string is invalid.").
    Neither can be encoded as UTF-8, so neither could be a signature, input or feature
    name (protobuf strings), a string tensor, or part of a JSON answer.
    """
    if not body:
        raise errors.InvalidArgument("JSON Parse error: The document is empty")
    # surrogateescape: a byte that is not UTF-8 becomes one character, so the parser can
    # still report the syntax error that comes first, and _unicode_error finds the byte.
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise errors.InvalidArgument(f"JSON Parse error: The document is empty. at offset: {len(text)}")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as err:
        message = _JSON_ERRORS.get(err.msg, err.msg)
        if err.msg == "Expecting ',' delimiter":
            message = "Missing a comma or ']' after an array element." if _in_array(text, err.pos) \
                else "Missing a comma or '}' after an object member."
        raise errors.InvalidArgument(f"JSON Parse error: {message} at offset: {err.pos}") from None
    except RecursionError:
        raise errors.InvalidArgument("JSON Parse error: The document is nested too deeply") from None
    problem = _unicode_error(text, start, end, lone_surrogates)
    if problem is not None:
        raise errors.InvalidArgument(f"JSON Parse error: {problem}")
    if not trailing and text[end:].strip(" \t\n\r"):
        offset = end + len(text[end:]) - len(text[end:].lstrip(" \t\n\r"))
        raise errors.InvalidArgument(
            f"JSON Parse error: The document root must not be followed by other values. at offset: "
            f"{_byte_offset(text, offset)}")
    return value


def _unicode_error(text: str, start: int, end: int, lone_surrogates: bool) -> str | None:
    """RapidJSON's message and byte offset for the first string in text[start:end] that is not Unicode text.

    The parser accepted text[start:end], so every backslash and every byte that is not
    UTF-8 in it lies inside a string.
    """
    bad_byte = _NOT_UTF8.search(text, start, end)
    stop = bad_byte.start() if bad_byte else end
    if not lone_surrogates and text.find("\\u", start, stop) >= 0:
        lone = None  # where the first lone surrogate escape starts
        high = None  # (start, end) of a high surrogate escape whose low half may follow
        for escape in _ESCAPE.finditer(text, start, stop):
            code = int(escape.group(1), 16) if escape.group(1) else -1
            if high is not None:
                if 0xDC00 <= code <= 0xDFFF and escape.start() == high[1]:
                    high = None  # a pair: one character
                    continue
                lone = high[0]
                break
            if 0xD800 <= code <= 0xDBFF:
                high = (escape.start(), escape.end())
            elif 0xDC00 <= code <= 0xDFFF:
                lone = escape.start()
                break
        else:
            if high is not None:
                lone = high[0]
        if lone is not None:
            return f"The surrogate pair in string is invalid. at offset: {_byte_offset(text, lone)}"
    if bad_byte:
        return f"Invalid encoding in string. at offset: {_byte_offset(text, bad_byte.start())}"
    return None


def _byte_offset(text: str, index: int) -> int:
    """The offset in the body's bytes of text[index] (each surrogateescape character was one byte)."""
    return len(text[:index].encode("utf-8", "surrogateescape"))


def parse_document(body: bytes) -> dict:
    """ParseJson: the first JSON value of the body (trailing bytes ignored), which must be an object."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise errors.InvalidArgument(f"JSON Value: {_dump(document)} Is not object")
    return document


def _in_array(text: str, pos: int) -> bool:
    # Which container the parser was in: the innermost unclosed bracket before pos.
    depth = 0
    for char in reversed(text[:pos]):
        if char in "]}":
            depth += 1
        elif char in "[{":
            if depth == 0:
                return char == "["
            depth -= 1
    return False


def signature_name(document: dict) -> str:
    """The body's "signature_name" ("" when absent: the default signature)."""
    value = document.get("signature_name", "")
    if not isinstance(value, str):
        raise errors.InvalidArgument(
            f"JSON Value: {_dump(document)} not formatted correctly. 'signature_name' key must be a string value.")
    return value


def predict_inputs(document: dict, signature_defs: Mapping[str, meta_graph_pb2.SignatureDef], name: str,
                   max_instances: int) -> dict[str, np.ndarray]:
    """FillPredictRequestFromJson: the tensors of a predict body, typed by signature `name` of the answering
    version ("" = serving_default)."""
    signature = signature_defs.get(name or contract.SERVING_SIGNATURE)
    if signature is None:
        raise errors.InvalidArgument(
            f'Serving signature name: "{name or contract.SERVING_SIGNATURE}" not found in signature def')
    infos = dict(signature.inputs)
    if not infos:
        raise errors.InvalidArgument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    return _inputs_from_json(document, infos, max_instances)


def is_row_format(document: dict) -> bool:
    """Whether a predict body used row "instances" (answered as "predictions"), not columnar "inputs"."""
    return contract.INSTANCES_KEY in document


def _inputs_from_json(document: dict, infos: Mapping[str, Any], max_instances: int) -> dict[str, np.ndarray]:
    """Tensors by input name from "instances" (row) or "inputs" (columnar); `infos` are the signature's TensorInfos."""
    has_instances, has_inputs = contract.INSTANCES_KEY in document, contract.INPUTS_KEY in document
    if has_instances and has_inputs:
        raise errors.InvalidArgument(
            f"JSON Value: {_dump(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist ")
    if has_instances:
        instances = document[contract.INSTANCES_KEY]
        if not isinstance(instances, list):
            raise errors.InvalidArgument(f"JSON Value: {_dump(document)} Expecting 'instances' to be an list/array")
        if not instances:
            raise errors.InvalidArgument(f"JSON Value: {_dump(document)} No values in 'instances' array")
        if len(instances) > max_instances:
            raise too_many_instances(len(instances), max_instances)
        return _from_instances(instances, infos)
    if has_inputs:
        return _from_inputs(document[contract.INPUTS_KEY], infos)
    raise errors.InvalidArgument("Missing 'inputs' or 'instances' key")


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(contract.B64_KEY), str)


def _is_element_object(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


class _Column:
    """One input being filled from instances: its values and the shape every row must share."""

    def __init__(self, info):
        self.dtype = info.dtype
        self.values: list = []
        self.shape: list[int] | None = None
        self.size = 0

    def add(self, item) -> None:
        shape = _json_shape(item)
        values: list = []
        _fill(item, 0, shape, self.dtype, values)
        if self.shape is None:
            self.shape, self.size = shape, len(values)
        elif self.size != len(values):
            raise errors.InvalidArgument(f"Expecting tensor size: {self.size} but got: {len(values)}")
        elif self.shape != shape:
            raise errors.InvalidArgument(
                f"Expecting shape {_shape_text(self.shape)} but got: {_shape_text(shape)}")
        self.values.extend(values)

    def tensor(self, rows: int) -> np.ndarray:
        return _to_array(self.values, [rows] + (self.shape or []), self.dtype)


def _from_instances(instances: list, infos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise errors.InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            "per tensorinfo_map")
    columns = {name: _Column(info) for name, info in infos.items()}
    names = sorted(infos)
    if _is_element_object(instances[0]):
        for index, element in enumerate(instances):
            if not _is_element_object(element):
                raise errors.InvalidArgument(f"Expecting object but got list at item {index} of input list")
            for key, value in element.items():
                try:
                    if key not in columns:
                        raise errors.InvalidArgument(f"JSON object: does not have named input: {key}")
                    columns[key].add(value)
                except errors.ServingError as err:
                    raise errors.InvalidArgument(
                        f"Failed to process element: {index} key: {key} of 'instances' list. "
                        f"Error: {_status_text(err)}") from None
            if set(element) != set(names):
                raise errors.InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {_dump(element)} "
                    f"keys must be equal to: {','.join(names)}")
    else:
        name = names[0]
        for index, element in enumerate(instances):
            if _is_element_object(element):
                raise errors.InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
            try:
                columns[name].add(element)
            except errors.ServingError as err:
                raise errors.InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. Error: {_status_text(err)}") from None
        columns = {name: columns[name]}
    return {name: column.tensor(len(instances)) for name, column in columns.items()}


def _from_inputs(value, infos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or _is_b64(value):
        if len(infos) > 1:
            raise errors.InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                "per tensorinfo_map")
        ((name, info),) = infos.items()
        return {name: _tensor(value, info.dtype)}
    tensors = {}
    for name in sorted(infos):
        if name not in value:
            raise errors.InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], infos[name].dtype)
    return tensors


def _tensor(value, dtype: int) -> np.ndarray:
    shape = _json_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    return _to_array(values, shape, dtype)


def _json_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if len(shape) > _MAX_JSON_RANK:
            raise errors.InvalidArgument(f"JSON value is nested more than {_MAX_JSON_RANK} levels deep")
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level: int, shape: list[int], dtype: int, out: list) -> None:
    """FillTensorProto: append the leaves of `value` (checked against shape and dtype) to `out`."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise errors.InvalidArgument(
                f"JSON Value: {_dump(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}")
        out.append(_leaf(value, dtype))
        return
    if level >= rank:
        raise errors.InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise errors.InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}")
    if level == rank - 1:
        # The innermost lists hold the scalars: one loop, no recursion per value.
        for item in value:
            if isinstance(item, list):
                raise errors.InvalidArgument(f"Encountered list at unexpected level: {level + 1} expected < {rank}")
            out.append(_leaf(item, dtype))
        return
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _leaf(value, dtype: int):
    """One value of a tensor: {"b64": ...} for a string tensor, else a scalar of `dtype`."""
    if isinstance(value, dict):
        if dtype != types_pb2.DT_STRING:
            raise _type_error(value, dtype)
        return _decode_b64_object(value)
    return _scalar(value, dtype)


_INT_RANGES = {
    types_pb2.DT_INT32: (-2**31, 2**31 - 1), types_pb2.DT_INT16: (-2**31, 2**31 - 1),
    types_pb2.DT_INT8: (-2**31, 2**31 - 1), types_pb2.DT_UINT8: (-2**31, 2**31 - 1),
    types_pb2.DT_INT64: (-2**63, 2**63 - 1), types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}


def _scalar(value, dtype: int):
    """AddValueToTensor: one JSON scalar as `dtype`, with RapidJSON's type predicates."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        # NOTE: like TF Serving, no range check for int8/int16/uint8 (int_val is int32); numpy wraps.
        return value
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogateescape")
    raise errors.Unimplemented(f"Conversion of JSON Value: {_dump(value)} to type: {dtype_name(dtype)}")


def _decode_b64_object(value: dict) -> bytes:
    if not _is_b64(value):
        raise errors.InvalidArgument(f"JSON Value: {_dump(value)} not formatted correctly for base64 data")
    try:
        # serving.images is the one base64 decoder; strict is TF Serving's alphabet.
        return images.decode_b64(value[contract.B64_KEY], lenient=False)
    except images.InvalidImage:
        raise errors.InvalidArgument("Unable to base64 decode") from None


def _to_array(values: list, shape: list[int], dtype: int) -> np.ndarray:
    np_type = NUMPY_TYPES[dtype][0]
    if np_type is object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in (types_pb2.DT_INT8, types_pb2.DT_INT16, types_pb2.DT_UINT8):
        return np.array(values, dtype=np.int64).astype(np_type).reshape(shape)
    return np.array(values, dtype=np_type).reshape(shape)


def _type_error(value, dtype: int) -> errors.ServingError:
    if dtype in _NO_JSON and not isinstance(value, dict):
        return errors.Unimplemented(f"Conversion of JSON Value: {_dump(value)} to type: {dtype_name(dtype)}")
    return errors.InvalidArgument(
        f"JSON Value: {_dump(value)} Type: {_json_type(value)} is not of expected type: {dtype_name(dtype)}")


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _status_text(err: errors.ServingError) -> str:
    """absl::Status::ToString(): CODE: message."""
    return f"{err.code.name}: {err.message}"


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _dump(value) -> str:
    """JsonValueToDebugString: the value as JSON, cut at 256 bytes (possibly mid-token)."""
    parts: list[str] = []
    budget = [_DUMP_LIMIT]

    def emit(text: str) -> bool:
        parts.append(text)
        budget[0] -= len(text)
        return budget[0] > 0

    def walk(item) -> bool:
        if isinstance(item, dict):
            if not emit("{"):
                return False
            for i, (key, member) in enumerate(item.items()):
                if not emit((", " if i else "") + json.dumps(key, ensure_ascii=False) + ": ") or not walk(member):
                    return False
            return emit("}")
        if isinstance(item, list):
            if not emit("["):
                return False
            for i, member in enumerate(item):
                if (i and not emit(", ")) or not walk(member):
                    return False
            return emit("]")
        if isinstance(item, float) and not math.isfinite(item):
            return emit("NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity"))
        return emit(json.dumps(item, ensure_ascii=False))

    walk(value)
    return "".join(parts)[:_DUMP_LIMIT]


def examples_from_json(body: bytes) -> tuple[str, input_pb2.Input]:
    """FillClassifyRegressRequestFromJson: the whole body is checked before the model is looked up."""
    document = parse_document(body)
    name = signature_name(document)
    request_input = input_pb2.Input()
    context = None
    if "context" in document:
        context = request_input.example_list_with_context.context
        _example_from_json(document["context"], context)
    if "examples" not in document:
        raise errors.InvalidArgument(
            f"JSON Value: {_dump(document)} When method is classify, key 'examples' is expected and was not found")
    examples = document["examples"]
    if not isinstance(examples, list):
        raise errors.InvalidArgument(f"JSON Value: {_dump(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise errors.InvalidArgument(f"JSON Value: {_dump(document)} 'examples' value is an empty array")
    target = (request_input.example_list_with_context.examples if context is not None
              else request_input.example_list.examples)
    for value in examples:
        _example_from_json(value, target.add())
    return name, request_input


def _example_from_json(value, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_to_feature(value, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature: JSON scalar -> bytes/float/int64 list, with TF Serving's messages."""
    kind = feature.WhichOneof("kind")

    def require(wanted: str) -> None:
        if kind is not None and kind != wanted:
            kind_name = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}[kind]
            raise errors.InvalidArgument(f"Unexpected element type in feature: {name} expecting type: {kind_name}")

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64(value)):
        raise errors.InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        require("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64_object(value))
    elif isinstance(value, str):
        require("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", "surrogateescape"))
    elif isinstance(value, float) or not -2**63 <= value < 2**64:
        # RapidJSON reads integers beyond uint64 as doubles.
        require("float_list")
        feature.float_list.value.append(float(value))
    else:
        require("int64_list")
        if value >= 2**63:
            raise errors.InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)


def predict_body(outputs: dict[str, np.ndarray], row_format: bool) -> bytes:
    """MakeJsonFromTensors: {"predictions": ...} for row requests, {"outputs": ...} for columnar."""
    if not outputs:
        raise errors.InvalidArgument("Cannot convert empty tensor map to JSON")
    if not row_format:
        if len(outputs) == 1:
            ((name, tensor),) = outputs.items()
            return json_bytes({"outputs": _json_value(tensor, name)})
        return json_bytes({"outputs": {name: _json_value(tensor, name) for name, tensor in outputs.items()}})
    batch = -1
    for name, tensor in outputs.items():
        if tensor.ndim == 0:
            raise errors.InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and tensor.shape[0] != batch:
            raise errors.InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {tensor.shape[0]} expecting: {batch}")
        batch = tensor.shape[0]
    if len(outputs) == 1:
        ((name, tensor),) = outputs.items()
        return json_bytes({"predictions": _json_value(tensor, name)})
    columns = {name: _json_value(tensor, name) for name, tensor in outputs.items()}
    return json_bytes({"predictions": [{name: column[i] for name, column in columns.items()} for i in range(batch)]})


def _json_value(tensor: np.ndarray, name: str):
    """A tensor as nested JSON values, written as TF Serving writes them."""
    tensor = np.asarray(tensor)
    if tensor.dtype == object or tensor.dtype.kind == "S":
        if name.endswith("_bytes"):
            return _map_nested(tensor.tolist(), lambda b: {contract.B64_KEY: base64.b64encode(bytes(b)).decode("ascii")})
        return _map_nested(tensor.tolist(), as_text)
    if tensor.dtype == np.float32:
        # Shortest decimal that reads back as the same float32 (WriteDecimal's intent), not
        # the float64 expansion's noise digits.
        return tensor.astype(str).astype(np.float64).tolist()
    if tensor.dtype in _JSON_OUTPUT_TYPES:
        return tensor.tolist()
    raise errors.InvalidArgument(
        f"Failed to write JSON value for tensor type: {NUMPY_NAMES.get(tensor.dtype, str(tensor.dtype))}")


# AddSingleValueAndAdvance's cases (float32 and strings are handled above).
_JSON_OUTPUT_TYPES = tuple(np.dtype(t) for t in (
    np.float64, np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64))


def _map_nested(value, function):
    if isinstance(value, list):
        return [_map_nested(item, function) for item in value]
    return function(value)


def classify_body(result: classification_pb2.ClassificationResult) -> bytes:
    """MakeJsonFromClassificationResult: {"results": [[[label, score], ...], ...]}."""
    results = [[[as_text(c.label), _float32(c.score)] for c in classes.classes] for classes in result.classifications]
    if not results:
        raise errors.InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    return json_bytes({"results": results})


def regress_body(result: regression_pb2.RegressionResult) -> bytes:
    """MakeJsonFromRegressionResult: {"results": [value, ...]}."""
    values = [_float32(r.value) for r in result.regressions]
    if not values:
        raise errors.InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return json_bytes({"results": values})


def status_body(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    return json_format.MessageToJson(
        response, preserving_proto_field_name=True, including_default_value_fields=True, indent=1).encode()


def metadata_body(response: get_model_metadata_pb2.GetModelMetadataResponse) -> bytes:
    """Built by hand, as http_rest_api_util.cc does: the Any is shown unpacked."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    document = {
        "model_spec": _proto_dict(response.model_spec),
        "metadata": {"signature_def": _proto_dict(signature_map)},
    }
    return json.dumps(document, indent=1).encode()


def _proto_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True, including_default_value_fields=True)


def _float32(value: float) -> float:
    return float(str(np.float32(value)))


def json_bytes(document, *, raw_bytes: bool = True) -> bytes:
    """A JSON answer as UTF-8; NaN/Infinity are written as bare tokens, as TF Serving does.

    With `raw_bytes`, surrogate-escaped bytes (a file name in a message, a string
    tensor that is not UTF-8) go out as the bytes they stand for, as TF Serving
    writes them; without, such strings are not bytes but text quoted from a request.
    Either way a lone surrogate that cannot be written makes the whole document
    ASCII with \\u escapes, so an answer can always be sent.
    """
    text = json.dumps(document, ensure_ascii=False)
    try:
        return text.encode("utf-8", "surrogateescape" if raw_bytes else "strict")
    except UnicodeEncodeError:
        return json.dumps(document).encode("ascii")
