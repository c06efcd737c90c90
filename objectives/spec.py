"""What one trial trains: a typed, immutable description passed down from the CLI.

Everything a trial needs is here as plain values, so the same spec (stored in the study as a
dict) rebuilds the same trial on any host. `search` builds it from TOML + flags; `objectives`
only reads it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from objectives.user_error import UserError

# The layers LoRA attaches to, as comma-separated module names (a name matches every layer
# whose path ends in it: "conv2" is each ResNet block's second convolution). timm's ViTs fuse
# q, k, v in one `qkv` Linear: "qkv" adapts the fused layer, and any of "q", "k", "v" split it
# into three Linears first (the model card's "q,k,v", the paper's "q,v").
SPLIT_QKV_NAMES = frozenset({"q", "k", "v"})
VIT_TARGETS = ("q,k,v", "q,v", "qkv")


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, applied batched on the trial's device, per sample."""

    hflip: float = 0.5
    crop_padding: int = 28
    # RandomAffine: rotation in ±degrees, translation up to ±fraction of width/height,
    # scale drawn from the range; all off by default (the paper's pipeline turns them on).
    affine_degrees: float = 0.0
    affine_translate: float = 0.0
    affine_scale: tuple[float, float] = (1.0, 1.0)
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.05)
    mean: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
    std: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)


@dataclass(frozen=True)
class LoraParams:
    """One point of the search space. `alpha / rank` scales the adapter's update."""

    rank: int
    alpha: float
    dropout: float


@dataclass(frozen=True)
class TrainSpec:
    """Data, model and optimisation of a trial. Defaults reproduce the public model card."""

    model: str = "vit_small_patch16_224"
    pretrained: bool = True
    weights: str | None = None  # local checkpoint used instead of the hub's pretrained weights
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    targets: str = "q,k,v"  # LoRA's layers: see SPLIT_QKV_NAMES above
    head_hidden: int = 0  # > 0: the head is Linear -> ReLU -> Linear with this many units
    dataset: str = "cifar100"
    data_dir: str = "data"
    download: bool = True
    image_size: int = 224
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # only for datasets that ship without a test split
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 3e-4
    weight_decay: float = 1e-4
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    seed: int = 0  # the trial's training: model build, adapters, dropout, batch order, augmentation
    # The seed of the held-out splits; None: `seed`. A study's replicate trials train with other
    # seeds on the study's own splits, so that every trial is evaluated on the same examples.
    split_seed: int | None = None
    device: str = "auto"  # "auto": the first visible CUDA device, else CPU
    bf16: bool = True  # bf16 autocast on CUDA; off for GPUs without bf16. The CPU stays fp32.
    # torch.compile the model. Measured on the CPU demo only (BENCHMARKS.md): +3.9% images/s
    # for 19.2 s of compiling per trial; no GPU figure yet. Off by default.
    compile: bool = False

    @property
    def target_modules(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.targets.split(","))

    @property
    def splits_qkv(self) -> bool:
        return bool(SPLIT_QKV_NAMES & set(self.target_modules))

    @property
    def splits_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "train") -> TrainSpec:
        """The spec from plain values (a TOML table, a study's or an export's stored dict),
        every value's type checked against its field (SpecError naming `where`.key
        otherwise), lists made tuples; nothing else: ranges, files and names are checked by
        `search.study.study_spec.validate_train_spec`."""
        values = dict(values)
        augment = convert_fields(AugmentSpec, values.pop("augment", {}) or {}, f"{where}.augment")
        return cls(augment=AugmentSpec(**augment), **convert_fields(cls, values, where))


class SpecError(UserError):
    """A spec that cannot be read or does not make sense; one line for the user."""






def convert_fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Check each value against the dataclass field's annotated type; lists become tuples."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - {"augment"}
    unknown = set(values) - names
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    return {key: convert_value(value, hints[key], f"{where}.{key}")
            for key, value in values.items()}



def convert_value(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return convert_value(value, inner, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SpecError(f"{where} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(convert_value(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, got {value!r}")
        return value
    raise SpecError(f"{where}: unsupported value {value!r}")
