"""Tensor element types as TF Serving names them, and string elements as it writes them.

Shared by the data plane (serving.handlers: TF Serving's dtype checks and their
messages) and the REST codec (serving.rest_codec: JSON values to arrays and back).

Layer: below the data plane. Imports numpy and TensorFlow's DataType enum (a protobuf).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2

# DataType -> (numpy type, DataTypeString name); strings are numpy object arrays of bytes.
NUMPY_TYPES: dict[int, tuple[Any, str]] = {
    types_pb2.DT_FLOAT: (np.float32, "float"),
    types_pb2.DT_DOUBLE: (np.float64, "double"),
    types_pb2.DT_INT32: (np.int32, "int32"),
    types_pb2.DT_INT16: (np.int16, "int16"),
    types_pb2.DT_INT8: (np.int8, "int8"),
    types_pb2.DT_UINT8: (np.uint8, "uint8"),
    types_pb2.DT_INT64: (np.int64, "int64"),
    types_pb2.DT_UINT32: (np.uint32, "uint32"),
    types_pb2.DT_UINT64: (np.uint64, "uint64"),
    types_pb2.DT_BOOL: (np.bool_, "bool"),
    types_pb2.DT_STRING: (object, "string"),
    types_pb2.DT_HALF: (np.float16, "half"),
    types_pb2.DT_UINT16: (np.uint16, "uint16"),
    types_pb2.DT_COMPLEX64: (np.complex64, "complex64"),
    types_pb2.DT_COMPLEX128: (np.complex128, "complex128"),
}
# numpy dtype -> DataTypeString name, for the numeric types above.
NUMPY_NAMES = {np.dtype(np_type): name for np_type, name in NUMPY_TYPES.values() if np_type is not object}


def dtype_name(dtype: int) -> str:
    """DataTypeString: "float", "string", ..."""
    return NUMPY_TYPES.get(dtype, (None, types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()))[1]


def numpy_matches(array: np.ndarray, dtype: int) -> bool:
    """Whether `array` holds elements of DataType `dtype` (bytes or object arrays for strings)."""
    expected = NUMPY_TYPES.get(dtype, (None, ""))[0]
    if expected is object:
        return array.dtype == object or array.dtype.kind == "S"
    return expected is not None and array.dtype == np.dtype(expected)


def numpy_dtype_name(array: np.ndarray) -> str:
    """The DataTypeString name of an array's elements."""
    if array.dtype == object or array.dtype.kind == "S":
        return "string"
    return NUMPY_NAMES.get(array.dtype, str(array.dtype))


def as_text(value) -> str:
    """A string element as text: its raw bytes, as TF Serving writes them (invalid UTF-8 passes through)."""
    return bytes(value).decode("utf-8", "surrogateescape") if isinstance(value, (bytes, np.bytes_)) else str(value)
