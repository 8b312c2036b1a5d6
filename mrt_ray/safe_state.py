"""Training state without pickle: a nested structure (dicts, lists, tuples, tensors, numbers, strings, None) is
stored as ONE safetensors file. Its tensors are the file's tensors; everything else is a JSON tree in the file's
metadata, in which a tensor is a reference to its key. Reading it never executes anything from the file: the
safetensors header is JSON, the tensors are raw bytes, and the only objects built are plain containers, numbers,
strings, and instances of the classes the caller allows by name (`objects`), whose attributes are set from the tree.

Types that JSON lacks are tagged objects: {"$t": key} a tensor, {"$tuple": [...]}, {"$set": [...]},
{"$dict": [[key, value], ...]} (a dict with non-string keys, e.g. an optimizer's parameter indices),
{"$odict": ...} an OrderedDict, {"$size": [...]} a torch.Size, {"$dtype": "float32"}, {"$device": "cpu"},
{"$enum": name, "value": v} and {"$obj": name, "state": {...}} (allowed classes only). A value that is none of
these is an error naming where it sits: nothing is ever silently pickled.
"""
from __future__ import annotations

import enum
import json
import numbers
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

FORMAT = "mrt-ray-state/1"
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle PROTO 2-5; torch zip


class StateError(ValueError):
    """A state that cannot be written without pickle, or a file that is not an mrt-ray state file."""


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Encoder:
    def __init__(self, objects: dict[str, type]):
        self.objects, self.tensors, self.seen = objects, {}, {}
        self.storages: set[int] = set()

    def tensor(self, t: torch.Tensor) -> str:
        if id(t) in self.seen:  # the same tensor object twice (tied weights): stored once, and still one object
            return self.seen[id(t)]
        key = f"t{len(self.tensors)}"
        data = t.detach().cpu()
        storage = data.untyped_storage().data_ptr()
        whole = data.is_contiguous() and data.untyped_storage().nbytes() == data.numel() * data.element_size()
        if storage in self.storages or not whole:  # a view or shared storage: safetensors wants separate tensors
            data = data.clone()
        self.storages.add(data.untyped_storage().data_ptr())
        self.tensors[key] = data
        self.seen[id(t)] = key
        return key

    def __call__(self, x: Any, where: str) -> Any:
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, enum.Enum):  # before int/float: an IntEnum is an int
            return {"$enum": self._allowed(type(x), where), "value": self(x.value, where)}
        if isinstance(x, numbers.Integral):  # numpy scalars too: their value, exactly
            return int(x)
        if isinstance(x, numbers.Real):
            return float(x)
        if isinstance(x, torch.Tensor):
            return {"$t": self.tensor(x)}
        if isinstance(x, torch.Size):
            return {"$size": list(x)}
        if isinstance(x, torch.dtype):
            return {"$dtype": str(x).removeprefix("torch.")}
        if isinstance(x, torch.device):
            return {"$device": str(x)}
        if isinstance(x, dict):
            plain = all(isinstance(k, str) and not k.startswith("$") for k in x)
            if plain and type(x) is dict:
                return {k: self(v, f"{where}.{k}") for k, v in x.items()}
            items = [[self(k, f"{where}[key]"), self(v, f"{where}[{k!r}]")] for k, v in x.items()]
            if type(x) is dict:
                return {"$dict": items}
            if type(x) is OrderedDict:
                return {"$odict": items}
        if type(x) is list:
            return [self(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if type(x) is tuple:
            return {"$tuple": [self(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if type(x) in (set, frozenset):
            return {"$set": [self(v, f"{where}[item]") for v in sorted(x, key=repr)]}
        name = qualname(type(x))
        if name in self.objects and hasattr(x, "__dict__"):
            return {"$obj": name, "state": self(dict(vars(x)), f"{where}<{type(x).__name__}>")}
        raise StateError(f"cannot store {name} at {where or 'the top'} without pickle; allowed objects: "
                         f"{sorted(self.objects) or 'none'}")

    def _allowed(self, cls: type, where: str) -> str:
        name = qualname(cls)
        if name not in self.objects:
            raise StateError(f"cannot store {name} at {where or 'the top'} without pickle; allowed objects: "
                             f"{sorted(self.objects) or 'none'}")
        return name


def _decode(node: Any, tensors: dict[str, torch.Tensor], objects: dict[str, type], where: str) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors, objects, f"{where}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node
    if len(node) in (1, 2) and next(iter(node)).startswith("$"):
        tag = next(iter(node))
        val = node[tag]
        if tag == "$t":
            if val not in tensors:
                raise StateError(f"{where}: tensor {val!r} is missing from the file")
            return tensors[val]
        if tag == "$tuple":
            return tuple(_decode(v, tensors, objects, where) for v in val)
        if tag == "$set":
            return {_decode(v, tensors, objects, where) for v in val}
        if tag in ("$dict", "$odict"):
            items = [(_decode(k, tensors, objects, where), _decode(v, tensors, objects, where)) for k, v in val]
            return dict(items) if tag == "$dict" else OrderedDict(items)
        if tag == "$size":
            return torch.Size(val)
        if tag == "$dtype":
            dtype = getattr(torch, val, None)
            if not isinstance(dtype, torch.dtype):
                raise StateError(f"{where}: unknown dtype {val!r}")
            return dtype
        if tag == "$device":
            return torch.device(val)
        if tag in ("$enum", "$obj"):
            if val not in objects:
                raise StateError(f"{where}: the file asks for {val}, which is not an allowed object "
                                 f"({sorted(objects) or 'none'})")
            cls = objects[val]
            if tag == "$enum":
                return cls(_decode(node["value"], tensors, objects, where))
            state = _decode(node["state"], tensors, objects, where)
            obj = cls.__new__(cls)
            obj.__dict__.update(state)
            return obj
        raise StateError(f"{where}: unknown tag {tag!r}")
    return {k: _decode(v, tensors, objects, f"{where}.{k}") for k, v in node.items()}


def save(obj: Any, path: str | Path, objects: dict[str, type] | None = None) -> None:
    """Write `obj` to `path` (safetensors). `objects`: the classes (by `qualname`) whose instances may be stored."""
    from safetensors.torch import save_file

    enc = _Encoder(objects or {})
    tree = enc(obj, "")
    save_file(enc.tensors, str(path), metadata={"format": FORMAT, "tree": json.dumps(tree)})


def load(path: str | Path, objects: dict[str, type] | None = None, device: str | torch.device = "cpu") -> Any:
    """Read what `save` wrote; tensors land on `device`. A file that is not an mrt-ray state file (a pickle, say)
    is refused with a StateError before any of it is interpreted."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if is_pickle(path):
        raise StateError(f"{path} is a pickle (torch.save format); mrt-ray never unpickles a checkpoint")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise StateError(f"{path} is not a safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise StateError(f"{path} is not an mrt-ray state file (format {meta.get('format')!r}, expected {FORMAT})")
    return _decode(json.loads(meta["tree"]), tensors, objects or {}, "")


def is_state_file(path: str | Path) -> bool:
    """True when the file's safetensors header says it is an mrt-ray state file (the header only is read)."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 0 < n < 100 * 2**20:
            return False
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT


def is_pickle(path: str | Path) -> bool:
    """True when the file starts like a pickle (protocol 2-5) or a torch.save zip archive."""
    with open(path, "rb") as f:
        head = f.read(4)
    return any(head.startswith(m) for m in PICKLE_MAGIC)
