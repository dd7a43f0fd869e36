"""Load CLIP checkpoints of every common format into edgeclip's `CLIP`, without running code from the file.

Formats: OpenAI's TorchScript archives (read as data, never `torch.jit.load`), OpenAI / open_clip state dicts
(`.pt`, `.pth`, `.bin`, `.safetensors`), Hugging Face CLIPModel directories, and edgeclip's own `.safetensors`
(config and contract in the metadata), which `save_checkpoint` writes.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from edgeclip import convert
from edgeclip.contract import MAX_IMAGE_SIZE, HeadSpec, ImageSpec, ModelContract, TextSpec
from edgeclip.convert import StateDict
from edgeclip.errors import CheckpointError, InputError
from edgeclip.fileio import atomic_path, chmod_as_new_file, sha256_files
from edgeclip.models.clip import CLIP
from edgeclip.models.config import CLIPConfig, config_from_dict, config_to_dict
from edgeclip.models.config import preset as preset_config
from edgeclip.schema import MAX_DEPTH, Node, too_deep

SourceFormat = Literal["openai-torchscript", "openai", "open_clip", "hf", "edgeclip"]
ACTIVATIONS = ("quick_gelu", "gelu")
FORMAT_VERSION = "1"
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Checkpoint:
    model: CLIP  # eval mode, fp32
    contract: ModelContract
    source_format: SourceFormat
    sha256: str  # of the source file (HF directory: of the weights file)
    tokenizer_dir: Path | None  # HF directory holding vocab.json + merges.txt or tokenizer.json, else None
    extra: dict[str, Any] = field(default_factory=dict)  # what save_checkpoint(extra=...) stored


@dataclass(frozen=True)
class _Raw:
    """What a reader found in the file, before conversion."""

    sd: StateDict
    source_format: SourceFormat
    sha256: str
    config: CLIPConfig | None = None  # exact config (edgeclip format); None: read it from the weights
    hf_config: dict[str, Any] | None = None
    contract: ModelContract | None = None
    image: ImageSpec | None = None
    tokenizer_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | os.PathLike[str], *, preset: str | None = None, act: str | None = None) -> Checkpoint:
    """Load a checkpoint file or Hugging Face directory; the architecture comes from the weights.

    `preset`: a name of `edgeclip.models.config.PRESETS` whose shapes must fit the weights. For files that carry
    no config (OpenAI / open_clip layouts) it supplies what the weights cannot tell (activation, heads); the configs
    of Hugging Face directories and edgeclip files are kept. `act`: "quick_gelu" or "gelu", overriding the
    activation (OpenAI-layout files otherwise mean QuickGELU).
    """
    if act is not None and act not in ACTIVATIONS:
        raise InputError(f"unknown activation act={act!r}; expected one of {', '.join(map(repr, ACTIVATIONS))}")
    base = preset_config(preset) if preset is not None else None
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: the path does not exist; give a checkpoint file (.pt, .pth, .bin, "
            f".safetensors) or a Hugging Face model directory"
        )
    raw = _read_hf_dir(path) if path.is_dir() else _read_file(path)
    sd, config = _convert(raw, path)
    if base is not None:
        mismatches = convert.shape_mismatches(base, config)
        if mismatches:
            raise CheckpointError(
                f"preset {preset!r} does not fit the weights in {path}: {'; '.join(mismatches)}; drop preset= to "
                f"read the architecture from the weights, or name a preset of this shape"
            )
        if raw.config is None and raw.hf_config is None:
            config = base
    if act is not None:
        config = config.with_act(act)  # type: ignore[arg-type]  # checked against ACTIVATIONS above
    model = _build(config, sd, path)
    contract = raw.contract or _contract(preset or _default_name(path), config, model, raw.image)
    return Checkpoint(model, contract, raw.source_format, raw.sha256, raw.tokenizer_dir, raw.extra)


def check_checkpoint_name(path: Path) -> None:
    """What `save_checkpoint` refuses, for callers that must refuse it before long work (a training run's --final)."""
    if path.suffix != ".safetensors":
        raise InputError(f"save_checkpoint writes safetensors: name the file *.safetensors, not {path.name!r}")


def save_checkpoint(
    model: CLIP,
    path: str | os.PathLike[str],
    *,
    contract: ModelContract | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write edgeclip's own format: safetensors with the config (and contract, extra) as JSON metadata.

    Written to a temporary file beside `path`, flushed to disk, then renamed over it: an existing file is never left
    half-written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    check_checkpoint_name(path)
    metadata = {"edgeclip_format": FORMAT_VERSION, "edgeclip_config": json.dumps(config_to_dict(model.config))}
    if contract is not None:
        _check_contract(contract, model.config)
        metadata["edgeclip_contract"] = json.dumps(contract.to_dict())
    try:
        metadata["edgeclip_extra"] = json.dumps(extra or {})
    except TypeError as exc:
        raise InputError(f"save_checkpoint(extra=...) must be JSON-serialisable: {exc}") from exc
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        chmod_as_new_file(tmp)  # safetensors makes the file private (0600); a model file is not a secret


def _check_contract(contract: ModelContract, config: CLIPConfig) -> None:
    found = {
        "image.size": (contract.image.size, config.vision.image_size),
        "text.context_length": (contract.text.context_length, config.text.context_length),
        "text.vocab_size": (contract.text.vocab_size, config.text.vocab_size),
        "head.embed_dim": (contract.head.embed_dim, config.embed_dim),
    }
    wrong = [f"{name} is {a} in the contract but {b} in the model" for name, (a, b) in found.items() if a != b]
    if wrong:
        raise InputError(f"the contract does not fit the model: {'; '.join(wrong)}; fix the contract")


# ---- conversion: a chain of pure functions, then one strict load ----


def _convert(raw: _Raw, path: Path) -> tuple[StateDict, CLIPConfig]:
    sd = convert.to_float32(raw.sd)
    if raw.config is not None:  # edgeclip's own format: keys and config are already ours
        return sd, raw.config
    sd = convert.strip_prefix(sd, "module.")
    layout = convert.detect_layout(sd)
    if layout is None:
        raise CheckpointError(
            f"unknown checkpoint layout in {path}: expected OpenAI/open_clip keys ({', '.join(convert.OPENAI_KEYS)}, "
            f"...) or Hugging Face CLIPModel keys ({', '.join(convert.HF_KEYS)}, ...); found {len(sd)} keys: "
            f"{', '.join(sorted(sd)[:8])}{', ...' if len(sd) > 8 else ''}"
        )
    steps: list[Callable[[StateDict], StateDict]] = (
        [convert.openai_from_hf] if layout == "hf" else [convert.drop_openai_extras, convert.add_bn_counters]
    )
    for step in steps:
        sd = step(sd)
    config = convert.config_from_state_dict(sd)
    if layout == "hf":
        if raw.hf_config is not None:
            config = convert.with_hf_config(config, raw.hf_config, source=str(path / "config.json"))
        else:
            config = _bare_hf_config(config, path)
    return sd, config


def _bare_hf_config(config: CLIPConfig, path: Path) -> CLIPConfig:
    """A state dict in transformers' layout without its config.json: the weights cannot tell the heads. Every
    published CLIP has 64-wide heads (ViT-B/32's 12 and 8, ViT-L/14's 16 and 12): take that, and say so."""
    towers: dict[str, Any] = {"vision_config": {}, "text_config": {}}
    for key, width in (("vision_config", config.vision.width), ("text_config", config.text.width)):
        if width % 64 == 0:
            towers[key]["num_attention_heads"] = width // 64
    guessed = {k.split("_")[0]: v["num_attention_heads"] for k, v in towers.items() if v}
    warnings.warn(
        f"{path} has no config.json: the attention heads are taken to be 64 wide "
        f"({', '.join(f'{t} {n} heads' for t, n in guessed.items()) or 'no width is a multiple of 64'}), the "
        "activation QuickGELU and the other settings transformers' defaults; if the model was saved with other "
        "settings, put its config.json beside the weights (a wrong guess still passes the export's parity check)",
        UserWarning,
        stacklevel=3,
    )
    return convert.with_hf_config(config, towers, source=f"{path} (no config.json: transformers' defaults)")


def _build(config: CLIPConfig, sd: StateDict, path: Path) -> CLIP:
    # Built on the meta device: no time spent initialising weights that the state dict replaces.
    with torch.device("meta"):
        model = CLIP(config)
    expected, found = set(model.state_dict()), set(sd)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"the weights in {path} do not fit the architecture read from them: missing {_few(missing)}; "
            f"unexpected {_few(unexpected)}; this CLIP variant is not supported"
        )
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {path} do not fit the architecture read from them: {exc}") from None
    return model.eval()


def _few(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:6]) + (f" (and {len(keys) - 6} more)" if len(keys) > 6 else "")


def _default_name(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _contract(name: str, config: CLIPConfig, model: CLIP, image: ImageSpec | None) -> ModelContract:
    text = config.text
    if image is not None and image.size != config.vision.image_size:
        raise CheckpointError(
            f"the preprocessing config crops images to {image.size} pixels but the model takes "
            f"{config.vision.image_size}; fix crop_size in preprocessor_config.json"
        )
    return ModelContract(
        name=name,
        image=image or ImageSpec(size=config.vision.image_size),
        text=TextSpec(
            context_length=text.context_length,
            vocab_size=text.vocab_size,
            sot_id=text.eot_id - 1,  # the CLIP BPE puts <|startoftext|> just before <|endoftext|>
            eot_id=text.eot_id,
            pooling=text.pooling,
        ),
        head=HeadSpec(embed_dim=config.embed_dim, logit_scale=math.exp(model.logit_scale.item())),
    )


# ---- readers ----


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); download or save it again"
    )


def _read_file(path: Path) -> _Raw:
    with path.open("rb") as f:
        head = f.read(9)
    sha = sha256_files(path)
    try:
        if head[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as zf:
                scripted = any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())
            if scripted:
                return _Raw(_read_torchscript(path), "openai-torchscript", sha)
            return _from_torch_object(_torch_load(path), path, sha)
        # Safetensors before pickle: the u64 header size can start with the pickle opcode 0x80.
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header size, then the JSON header
            return _read_safetensors(path, sha)
        if head[:1] == b"\x80":  # a pickle: torch.save's legacy (pre-zip) format
            return _from_torch_object(_torch_load(path), path, sha)
    except CheckpointError:
        raise
    except Exception as exc:  # any parser failure on a damaged file; the message names the cause
        raise _corrupt(path, exc) from exc
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt") or len(head) < 9:
        raise _corrupt(path, ValueError(f"unrecognised header {head!r}"))
    raise CheckpointError(
        f"{path} is not a checkpoint edgeclip can read: expected a PyTorch file (.pt, .pth, .bin), a TorchScript "
        f"archive, a .safetensors file or a Hugging Face model directory"
    )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(
                f"{path} holds Python objects besides tensors, and edgeclip does not run code from checkpoints; "
                f"save the weights alone with torch.save(model.state_dict(), path)"
            ) from None
        raise


def _from_torch_object(obj: Any, path: Path, sha: str) -> _Raw:
    sd = convert.unwrap(obj, str(path))
    # OpenAI and open_clip share the layout; open_clip's training checkpoints wrap it in 'state_dict' with
    # 'module.' prefixes. A bare dict cannot tell the two apart: it is called "openai".
    wrapped = (isinstance(obj, dict) and "state_dict" in obj) or any(k.startswith("module.") for k in sd)
    return _Raw(sd, _layout_source(sd, "open_clip" if wrapped else "openai"), sha)


def _layout_source(sd: StateDict, openai_name: SourceFormat) -> SourceFormat:
    return "hf" if convert.detect_layout(convert.strip_prefix(sd)) == "hf" else openai_name


def _read_safetensors(path: Path, sha: str) -> _Raw:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  # safe_open is not a Mapping
    if "edgeclip_format" not in meta:  # a plain state dict (open_clip publishes .safetensors)
        return _Raw(sd, _layout_source(sd, "open_clip"), sha)
    if meta["edgeclip_format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is edgeclip checkpoint format {meta['edgeclip_format']!r}; this edgeclip reads format "
            f"{FORMAT_VERSION!r}: upgrade edgeclip"
        )
    try:
        config = config_from_dict(json.loads(meta["edgeclip_config"]))
        contract = None
        if "edgeclip_contract" in meta:
            contract = ModelContract.from_dict(json.loads(meta["edgeclip_contract"]), hint="")
        extra = json.loads(meta.get("edgeclip_extra", "{}"))
    except Exception as exc:  # JSON, config (InputError) or contract (BundleError) errors
        raise CheckpointError(f"the edgeclip metadata of {path} is malformed: {exc}; save it again") from None
    return _Raw(sd, "edgeclip", sha, config=config, contract=contract, extra=extra)


def _read_hf_dir(path: Path) -> _Raw:
    present = sorted(p.name for p in path.iterdir())
    weights = next((path / n for n in _HF_WEIGHTS if (path / n).is_file()), None)
    if not (path / "config.json").is_file() or weights is None:
        lacking = "config.json" if weights is not None else "a weights file (" + ", ".join(_HF_WEIGHTS) + ")"
        raise CheckpointError(
            f"{path} is not a Hugging Face CLIPModel directory: it lacks {lacking}; found: "
            f"{', '.join(present) or 'nothing'}. Save the model with save_pretrained(path)"
        )
    hf_config = _read_json(path / "config.json")
    model_type = hf_config.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(
            f"{path}/config.json is a {model_type!r} model; edgeclip loads CLIP models (model_type 'clip') only"
        )
    files = [weights]
    if weights.name.endswith(".index.json"):  # sharded: the index names the shard of every tensor
        files = [path / s for s in _shards(_read_json(weights), weights)]
    sd: StateDict = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{weights} names the shard {file.name}, which is missing from {path}")
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd.update(load_file(str(file)))
            else:
                sd.update(convert.unwrap(_torch_load(file), str(file)))
        except CheckpointError:
            raise
        except Exception as exc:
            raise _corrupt(file, exc) from exc
    image = None
    if (path / "preprocessor_config.json").is_file():
        image = _hf_image_spec(_read_json(path / "preprocessor_config.json"), path / "preprocessor_config.json")
    has_tokenizer = any((path / f).is_file() for f in ("vocab.json", "merges.txt", "tokenizer.json"))
    tokenizer_dir = path if has_tokenizer else None
    return _Raw(sd, "hf", sha256_files(*files), hf_config=hf_config, image=image, tokenizer_dir=tokenizer_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise _corrupt(path, ValueError("lists or objects nested thousands of levels deep")) from None
    except (OSError, ValueError) as exc:
        raise _corrupt(path, exc) from exc
    if not isinstance(data, dict):
        raise _corrupt(path, ValueError(f"expected a JSON object, found {type(data).__name__}"))
    if too_deep(data):
        raise _corrupt(path, ValueError(f"lists or objects nested more than {MAX_DEPTH} levels deep"))
    return data


def _shards(index: dict[str, Any], where: Path) -> list[str]:
    """The shard files a weight index (`*.index.json`) names, each checked to be a file beside it."""
    root = Node.root(index, error=CheckpointError, source=str(where), hint=convert.HF_CONFIG_HINT)
    weight_map = root.get("weight_map")
    if not weight_map.mapping():
        weight_map.fail("an object of tensor name -> shard file, naming at least one")
    shards = set()
    for key in weight_map.mapping():
        shard = weight_map.get(key)
        name = shard.string()
        if name in (".", "..") or "/" in name or "\\" in name:
            shard.fail("the name of a shard file in the same directory")
        shards.add(name)
    return sorted(shards)


def _hf_image_spec(pre: dict[str, Any], where: Path) -> ImageSpec:
    """Size, resize rule, mean and std from a CLIPImageProcessor config, every field read checked."""
    root = Node.root(pre, error=CheckpointError, source=str(where), hint=convert.HF_CONFIG_HINT)

    def side(node: Node) -> tuple[int, bool]:  # (pixels, True when both sides are forced to it)
        if not isinstance(node.value, dict):
            if not isinstance(node.value, int) or isinstance(node.value, bool) or not 1 <= node.value <= MAX_IMAGE_SIZE:
                node.fail(
                    f'a whole number of pixels from 1 to {MAX_IMAGE_SIZE}, or an object ({{"shortest_edge": N}} or '
                    f'{{"height": N, "width": N}})'
                )
            return node.value, False
        if node.has("shortest_edge"):
            return node.get("shortest_edge").whole(min=1, max=MAX_IMAGE_SIZE), False
        height = node.get("height").whole(min=1, max=MAX_IMAGE_SIZE)
        width = node.get("width").whole(min=1, max=MAX_IMAGE_SIZE)
        if height != width:
            node.refuse(f"is {height} x {width} pixels (height x width); edgeclip's image graphs take squares")
        return height, True

    for name in ("do_resize", "do_rescale"):
        if not root.get(name, True).flag():
            root.get(name).refuse("is false; edgeclip always resizes and scales pixels to [0, 1], as CLIP does")
    factor = root.get("rescale_factor", 1 / 255)
    if not math.isclose(factor.number(positive=True), 1 / 255, rel_tol=1e-6):
        factor.refuse(f"is {factor.value}; edgeclip scales pixels to [0, 1] (1/255), as CLIP does")
    size = root.get("size", 224)
    resize, squash = side(size)
    crop_node = root.get("crop_size", resize)
    crop, _ = side(crop_node)
    center_crop = root.get("do_center_crop", True).flag()
    resample = root.get("resample", 3)
    if resample.whole(min=0) != 3:  # PIL.Image.BICUBIC
        resample.refuse(f"is {resample.value}, not bicubic (3), the only one edgeclip runs")
    if squash and center_crop and resize != crop:
        raise CheckpointError(
            f"{where} resizes to {resize} x {resize} then crops {crop}; edgeclip's image spec resizes to the crop "
            f"size: set size and crop_size to the same value"
        )
    if isinstance(size.value, dict) and size.value.get("longest_edge") is not None:
        size.get("longest_edge").refuse("caps the long side, which edgeclip's image spec does not do; remove it")
    if not squash and center_crop and resize != crop:
        raise CheckpointError(
            f"{where} resizes the shortest side to {resize} then crops {crop}; edgeclip's image spec resizes to "
            f"the crop size: set size and crop_size to the same value"
        )
    if root.get("do_normalize", True).flag():
        mean = _channels(root.get("image_mean", list(ImageSpec().mean)), positive=False)
        std = _channels(root.get("image_std", list(ImageSpec().std)), positive=True)
    else:  # transformers then feeds pixels in [0, 1] as they are
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    # transformers floors the center crop's offset (torchvision's CenterCrop rounds it).
    return ImageSpec(size=crop if center_crop else resize, resize="squash" if squash else "shortest", crop="floor",
                     mean=mean, std=std)  # fmt: skip


def _channels(node: Node, *, positive: bool) -> tuple[float, float, float]:
    """A per-channel value of an image processor: 3 numbers, or one for all three (as transformers allows)."""
    if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        v = node.number(positive=positive)
        return v, v, v
    if not isinstance(node.value, (list, tuple)) or len(node.value) != 3:
        node.fail(f"a list of 3 finite numbers{' > 0' if positive else ''} (R, G, B), or one number")
    r, g, b = (item.number(positive=positive) for item in node.items())
    return r, g, b


# ---- TorchScript archives, read as data ----


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


_STORAGE_TYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for a `__torch__.*` class of the archive: keeps the attribute state, runs nothing."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: tuple[torch.UntypedStorage, torch.dtype], offset: int, size: Any, stride: Any,
                    *_: Any) -> Tensor:  # fmt: skip
    untyped, dtype = storage
    return torch.empty(0, dtype=dtype).set_(untyped, offset, tuple(size), tuple(stride))


def _identity(x: Any, *_: Any) -> Any:
    return x


class _ScriptUnpickler(pickle.Unpickler):
    """Rebuilds tensors and placeholder objects only; any other global is refused."""

    _SAFE: dict[tuple[str, str], Any] = {  # noqa: RUF012
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _identity,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch.jit._pickle", "build_intlist"): _identity,
        ("torch.jit._pickle", "build_doublelist"): _identity,
        ("torch.jit._pickle", "build_boollist"): _identity,
        ("torch.jit._pickle", "build_tensorlist"): _identity,
        ("torch.jit._pickle", "restore_type_tag"): _identity,
    }

    def __init__(self, data: bytes, read_record: Callable[[str], bytes]) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._read_record = read_record
        self._classes: dict[str, type] = {}
        self._storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return self._SAFE[(module, name)]
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(_STORAGE_TYPES[name])
        if module.startswith("__torch__"):
            qualname = f"{module}.{name}"
            return self._classes.setdefault(qualname, type(name, (_ScriptObject,), {"qualname": qualname}))
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}: it is not tensor data")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            data = bytearray(self._read_record(f"data/{key}"))
            expected = numel * torch.empty(0, dtype=storage_type.dtype).element_size()
            if len(data) < expected:
                raise pickle.UnpicklingError(f"storage {key} holds {len(data)} bytes, {expected} expected")
            self._storages[key] = torch.frombuffer(data, dtype=torch.uint8).untyped_storage() if data else (
                torch.UntypedStorage(0))  # fmt: skip
        return self._storages[key], storage_type.dtype


def _read_torchscript(path: Path) -> StateDict:
    """The parameters and buffers of a TorchScript archive, from its data.pkl, without executing the archive."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        data_pkl = next((n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")), None)
        if data_pkl is None:
            raise CheckpointError(f"{path} looks like a TorchScript archive but has no data.pkl; save it again")
        root = data_pkl[: -len("data.pkl")]
        try:
            top = _ScriptUnpickler(zf.read(data_pkl), lambda name: zf.read(root + name)).load()
        except pickle.UnpicklingError as exc:
            if "refusing" in str(exc):
                raise CheckpointError(f"{path}: {exc}; edgeclip reads only tensors from TorchScript archives") from None
            raise
    out: StateDict = {}
    _collect(top, "", out)
    return out


def _collect(obj: Any, prefix: str, out: StateDict) -> None:
    state = obj.state if isinstance(obj, _ScriptObject) else None
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if isinstance(value, Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out)
