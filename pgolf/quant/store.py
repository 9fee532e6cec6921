"""The `quantize` stage's output directory: quantized.safetensors + quantized.json.

safetensors keys: ``q/<name>`` (int8 symbols), ``scale/<name>`` (float16 per-row scales, or
[rows, groups] per-group scales), ``extra/<name>/<term.part>`` (each extra of a `QuantizedTensor`), ``plain/<name>`` (passthrough
tensors). The JSON holds the model config, the tied-weight aliases, each tensor's group, bits,
extras, scale group, grid and original dtype, and the per-tensor error report.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from pgolf.errors import DataError
from pgolf.io import read_json, write_json_atomic
from pgolf.quant.apply import QuantizedModel
from pgolf.quant.scheme import QuantizedTensor

TENSORS_FILE = "quantized.safetensors"
INFO_FILE = "quantized.json"


def save_quantized(qm: QuantizedModel, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    tensors = {}
    for name, qt in qm.quantized.items():
        tensors[f"q/{name}"] = qt.q.contiguous()
        tensors[f"scale/{name}"] = qt.scale.contiguous()
        for part, tensor in qt.extras.items():
            tensors[f"extra/{name}/{part}"] = tensor.contiguous()
    for name, tensor in qm.passthrough.items():
        tensors[f"plain/{name}"] = tensor.contiguous()
    save_file(tensors, str(out_dir / TENSORS_FILE))
    info = {
        "model_config": qm.model_config,
        "aliases": qm.aliases,
        "dtypes": qm.dtypes,
        "quantized": {name: {"group": qt.group, "bits": qt.bits, "extras": list(qt.extras), "scale_group": qt.scale_group, "grid": qt.grid} for name, qt in qm.quantized.items()},
        "order": list(qm.dtypes),
        "report": qm.report,
    }
    write_json_atomic(out_dir / INFO_FILE, info)


def load_quantized(directory: str | Path) -> QuantizedModel:
    directory = Path(directory)
    info = read_json(directory / INFO_FILE, "quantize output")
    path = directory / TENSORS_FILE
    if not path.is_file():
        raise DataError(f"{path}: quantized tensors not found (did the quantize stage run?)")
    tensors = load_file(str(path))
    try:
        quantized, passthrough = {}, {}
        for name in info["order"]:
            if name in info["quantized"]:
                spec = info["quantized"][name]
                extras = {part: tensors[f"extra/{name}/{part}"] for part in spec.get("extras", [])}
                quantized[name] = QuantizedTensor(name, spec["group"], int(spec["bits"]), tensors[f"q/{name}"], tensors[f"scale/{name}"], info["dtypes"][name], extras,
                                                  int(spec.get("scale_group", 0)), spec.get("grid", "symmetric"))
            else:
                passthrough[name] = tensors[f"plain/{name}"]
        return QuantizedModel(info["model_config"], quantized, passthrough, info["dtypes"], info["aliases"], info["report"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{directory}: quantize output is inconsistent (missing {exc})") from None
