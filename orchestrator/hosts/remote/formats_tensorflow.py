"""The TensorFlow formats: a SavedModel directory called through one signature, and a .keras
(or HDF5 .h5) file called directly. Both decide the GPU verdict the same way
(`tensorflow_gpu`): TensorFlow must list a GPU and every output must have been computed on one,
since TensorFlow silently falls back to the CPU when its CUDA libraries do not load.

Shipped to hosts (Python 3.9+, stdlib-only top level; TensorFlow and Keras come from the venv).
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING or __package__:
    from .formats_base import ModelFormat, file_problem, framework, model_file
else:  # on a host: shipped flat beside this file
    from formats_base import ModelFormat, file_problem, framework, model_file

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def tensorflow_gpu(tf: Any, devices: list[str], required: bool) -> dict[str, Any]:
    """The verdict: ok when TensorFlow lists a GPU and every output was computed on one."""
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    info = {k: str(v) for k, v in dict(tf.sysconfig.get_build_info()).items()}
    on_gpu = bool(devices) and all("GPU" in d.upper() for d in devices)
    ok = bool(gpus) and on_gpu
    saw = "TensorFlow {}: built with CUDA {} (cuda {}, cudnn {}), GPUs listed: {}, " \
        "outputs on {}".format(
        tf.__version__, tf.test.is_built_with_cuda(), info.get("cuda_version", "none"),
        info.get("cudnn_version", "none"), ", ".join(gpus) or "none",
        ", ".join(devices) or "unknown")
    return {"required": required, "checked": True, "ok": ok, "gpus": gpus,
            "output_devices": devices, "built_with_cuda": bool(tf.test.is_built_with_cuda()),
            "build_info": info,
            "message": ("model runs on the GPU: " if ok else "model does not run on a GPU: ") + saw}


class SavedModel:
    """A TensorFlow SavedModel called through one named signature."""

    def __init__(self, path: str, signature: str) -> None:
        tf = framework("tensorflow")
        self.tf = tf
        self.obj = tf.saved_model.load(path)
        if signature not in self.obj.signatures:
            has = ", ".join(sorted(self.obj.signatures)) or "none"
            raise LookupError(f"signature {signature!r} not in the SavedModel (has: {has})")
        self.fn = self.obj.signatures[signature]
        self.specs = dict(self.fn.structured_input_signature[1])
        self.findings: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def prepare(self, inputs: dict[str, Any]) -> Any:
        if set(inputs) == {""}:
            if len(self.specs) != 1:
                raise ValueError("golden has unnamed inputs but the signature takes {}: use "
                                 "input:<name> keys".format(", ".join(sorted(self.specs))))
            inputs = {next(iter(self.specs)): inputs[""]}
        if set(inputs) != set(self.specs):
            raise ValueError(f"golden inputs {sorted(inputs)}, "
                             f"signature inputs {sorted(self.specs)}")
        return {k: self.tf.constant(v, dtype=self.specs[k].dtype) for k, v in inputs.items()}

    def call(self, prepared: Any) -> dict[str, Any]:
        return dict(self.fn(**prepared))

    def run(self, prepared: Any) -> dict[str, Any]:
        return {k: v.numpy() for k, v in self.call(prepared).items()}

    def gpu(self, prepared: Any, required: bool) -> dict[str, Any]:
        devices = sorted({v.device for v in self.call(prepared).values()})
        return tensorflow_gpu(self.tf, devices, required)


class KerasModel:
    """A .keras file, called directly (model(x, training=False)), as a server would."""

    def __init__(self, path: str) -> None:
        tf = framework("tensorflow")
        try:
            load = framework("keras").models.load_model
        except ImportError:
            load = tf.keras.models.load_model
        self.tf = tf
        self.model = load(path, compile=False)
        self.findings: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def _input_dtypes(self) -> dict[str, str]:
        out = {}
        for t in getattr(self.model, "inputs", None) or []:
            dtype = str(getattr(t, "dtype", "float32"))
            out[getattr(t, "name", "")] = dtype.replace("<dtype: '", "").rstrip("'>")
        return out

    def prepare(self, inputs: dict[str, Any]) -> Any:
        dtypes = self._input_dtypes()
        if set(inputs) == {""}:
            dtype = next(iter(dtypes.values()), "float32")
            return self.tf.convert_to_tensor(inputs[""].astype(dtype))
        return {k: self.tf.convert_to_tensor(v.astype(dtypes.get(k, "float32")))
                for k, v in inputs.items()}

    def call(self, prepared: Any) -> dict[str, Any]:
        out = self.model(prepared, training=False)
        if isinstance(out, dict):
            return dict(out)
        if isinstance(out, (list, tuple)):
            names = list(getattr(self.model, "output_names", None) or [])
            if len(names) != len(out):
                names = [str(i) for i in range(len(out))]
            return dict(zip(names, out))
        return {"": out}

    def run(self, prepared: Any) -> dict[str, Any]:
        return {k: v.numpy() for k, v in self.call(prepared).items()}

    def gpu(self, prepared: Any, required: bool) -> dict[str, Any]:
        devices = sorted({getattr(v, "device", "") for v in self.call(prepared).values()})
        return tensorflow_gpu(self.tf, devices, required)


def savedmodel_shape(path: str) -> str | None:
    if not os.path.isdir(path):
        return "a tensorflow-savedmodel must be a directory"
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        return "no saved_model.pb in this tensorflow-savedmodel directory"
    return None


def keras_shape(path: str) -> str | None:
    problem = file_problem(path, "keras")
    if problem is None and not (zipfile.is_zipfile(path) or _is_hdf5(path)):
        return "not a Keras model: neither a .keras archive (zip) nor an HDF5 .h5 file"
    return problem


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_MAGIC


SAVEDMODEL = ModelFormat(
    name="tensorflow-savedmodel", summary="a TensorFlow SavedModel directory",
    frameworks=("tensorflow",), shape_problem=savedmodel_shape,
    load=lambda path, signature, method: SavedModel(path, signature))

KERAS = ModelFormat(
    name="keras", summary="a .keras file", frameworks=("tensorflow", "keras"),
    shape_problem=keras_shape,
    load=lambda path, signature, method: KerasModel(model_file(path, (".keras", ".h5"))))
