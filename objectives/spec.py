"""What one trial trains: a typed, immutable description passed down from the CLI.

Everything a trial needs is here as plain values, so the same spec (stored in the study as a
dict) rebuilds the same trial on any host. `search` builds it from TOML + flags; `objectives`
only reads it.
"""

from __future__ import annotations

import dataclasses
import math
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

# Named sets of a timm ViT's adapted layers (the search's `--targets-sets`), each as a
# `TrainSpec.targets` value. The LoRA literature finds all linear layers > MLP > attention
# only. The set "qkv" is the model card's three separate adapters (targets "q,k,v"), not the
# fused layer that targets = "qkv" adapts. "attn.proj" and "mlp.fc1" / "mlp.fc2" carry their
# parent's name because a bare "proj" also matches `patch_embed.proj`, the patch embedding's
# Conv2d (a name matches every layer whose path ends in it).
TARGET_SETS = {
    "qkv": "q,k,v",
    "qv": "q,v",
    "attn": "q,k,v,attn.proj",
    "all": "q,k,v,attn.proj,mlp.fc1,mlp.fc2",
}

# How an adapter's update B A is scaled: "lora" by alpha / r (LoRA, the model card),
# "rslora" by alpha / sqrt(r) (rank-stabilised LoRA, peft's `use_rslora`), which keeps the
# update's size from shrinking as the rank grows.
SCALINGS = ("lora", "rslora")


@dataclass(frozen=True)
class AugmentSpec:
    """Training-time augmentation, applied batched on the trial's device, per sample."""

    hflip: float = field(default=0.5, metadata={
        "help": "probability of a horizontal flip"})
    crop_padding: int = field(default=28, metadata={
        "help": "random crop back to the image size after padding each side by this many "
                "pixels; 0: no crop"})
    # The affine fields are off by default; the paper's specs turn them on.
    affine_degrees: float = field(default=0.0, metadata={
        "help": "random rotation within +/- this many degrees, 0 to 180"})
    affine_translate: float = field(default=0.0, metadata={
        "help": "random shift up to +/- this fraction of the width and height, in [0, 1)"})
    affine_scale: tuple[float, float] = field(default=(1.0, 1.0), metadata={
        "help": "random scale drawn from [low, high], 0 < low <= high"})
    color_jitter: tuple[float, float, float, float] = field(
        default=(0.3, 0.3, 0.3, 0.05), metadata={
            "help": "brightness, contrast, saturation and hue jitter as torchvision's "
                    "ColorJitter takes them (hue at most 0.5); zeros turn it off"})
    mean: tuple[float, float, float] = field(default=(0.5071, 0.4867, 0.4408), metadata={
        "help": "per-channel mean the images are normalised with (default: CIFAR-100's)"})
    std: tuple[float, float, float] = field(default=(0.2675, 0.2565, 0.2761), metadata={
        "help": "per-channel standard deviation the images are normalised with (default: "
                "CIFAR-100's)"})


def target_set(name: str) -> str:
    """The `TrainSpec.targets` of the named set of adapted layers (`TARGET_SETS`)."""
    if name not in TARGET_SETS:
        known = ", ".join(f"{key} ({value})" for key, value in TARGET_SETS.items())
        raise SpecError(f"unknown set of adapted layers '{name}'; known: {known}")
    return TARGET_SETS[name]


@dataclass(frozen=True)
class LoraParams:
    """One point of the search space: the adapters' rank, alpha and dropout, how alpha
    scales their update (`scale`), whether they are DoRA's, the trial's learning rate and
    the layers it adapts.

    The fields after `dropout` have defaults that mean what a point meant before they
    existed (alpha / r, plain LoRA, the spec's learning rate and targets), so stored points
    and checkpoints written without them read back as the same trials.
    """

    rank: int
    alpha: float
    dropout: float
    scaling: str = "lora"  # one of SCALINGS
    # DoRA (peft's `use_dora`): each adapted layer's per-output-feature weight magnitudes
    # train apart from their direction (W + s B A, normalised). Its update is not a low-rank
    # term added to the frozen output, so a DoRA point trains alone
    # (`objectives.packed_model.point_pack_refusal`).
    dora: bool = False
    lr: float | None = None  # None: the spec's lr
    # A `TrainSpec.targets` value (e.g. `target_set("all")`); None: the spec's targets.
    targets: str | None = None

    def __post_init__(self) -> None:
        if self.scaling not in SCALINGS:
            raise SpecError(f"scaling must be one of {', '.join(SCALINGS)}, not "
                            f"{self.scaling!r}")
        if self.lr is not None and not self.lr > 0:
            raise SpecError(f"a point's lr must be > 0, not {self.lr!r}")
        if self.targets is not None and not self.targets.strip():
            raise SpecError("a point's targets must name layers, not be empty")

    @property
    def scale(self) -> float:
        """The factor of the adapter's update, computed as peft computes it."""
        if self.scaling == "rslora":
            return self.alpha / math.sqrt(self.rank)
        return self.alpha / self.rank


def trial_spec(spec: TrainSpec, lora: LoraParams | None) -> TrainSpec:
    """The spec a trial of point `lora` builds its model from: `spec` with the point's
    targets, when it names some."""
    if lora is None or lora.targets is None:
        return spec
    return dataclasses.replace(spec, targets=lora.targets)


def trial_lr(spec: TrainSpec, lora: LoraParams | None) -> float:
    """The learning rate a trial trains with: its point's, else (and for the baseline) the
    spec's."""
    if lora is None or lora.lr is None:
        return spec.lr
    return lora.lr


@dataclass(frozen=True)
class TrainSpec:
    """Data, model and optimisation of a trial. Defaults reproduce the public model card."""

    model: str = field(default="vit_small_patch16_224", metadata={
        "help": "timm model name"})
    pretrained: bool = field(default=True, metadata={
        "help": "start from the hub's pretrained weights (or `weights`); false: random init"})
    weights: str | None = field(default=None, metadata={
        "help": "local checkpoint (.safetensors or .pth) used instead of the hub's pretrained "
                "weights, or a folder `search export --weights` wrote (its model, head aside); "
                "relative to the spec file"})
    model_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keyword arguments passed to timm.create_model, e.g. img_size, patch_size"})
    targets: str = field(default="q,k,v", metadata={
        "help": "LoRA's layers, comma-separated names: q,k,v (separate adapters, as the model "
                "card), q,v (the paper) or qkv (timm's fused layer) for a ViT; convolutions or "
                "Linear layers of a CNN, e.g. conv2 (ResNet), conv_pw,conv_pwl (EfficientNet)"})
    head_hidden: int = field(default=0, metadata={
        "help": "> 0: the head is Linear -> ReLU -> Linear with this many hidden units"})
    dataset: str = field(default="cifar100", metadata={
        "help": "a named dataset or imagefolder:PATH"})
    data_dir: str = field(default="data", metadata={
        "help": "folder with the dataset files, torchvision's layout (this host's own)"})
    download: bool = field(default=True, metadata={
        "help": "download a missing torchvision dataset into data_dir (this host's own)"})
    image_size: int = field(default=224, metadata={
        "help": "side in pixels the images are resized to (a ViT's model_kwargs img_size "
                "must match it)"})
    val_fraction: float = field(default=0.1, metadata={
        "help": "share of the train split held out for validation, stratified and seeded"})
    test_fraction: float = field(default=0.2, metadata={
        "help": "share held out for testing, only for datasets that ship without a test split"})
    epochs: int = field(default=10, metadata={"help": "training epochs of every trial"})
    batch_size: int = field(default=128, metadata={"help": "training images per step"})
    eval_batch_size: int = field(default=512, metadata={
        "help": "images per evaluation (and prediction) batch"})
    lr: float = field(default=3e-4, metadata={
        "help": "AdamW learning rate of the trained parameters, start of its cosine schedule"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    augment: AugmentSpec = field(default_factory=AugmentSpec, metadata={
        "help": "training-time augmentation, applied batched on the trial's device with "
                "independent random parameters per image", "table": "train.augment"})
    seed: int = field(default=0, metadata={
        "help": "seed of the trial's training: model build, adapters, dropout, batch order, "
                "augmentation"})
    # A study's replicate trials train with other seeds on the study's own splits, so that
    # every trial is evaluated on the same examples.
    split_seed: int | None = field(default=None, metadata={
        "help": "seed of the held-out splits; not set: seed"})
    device: str = field(default="auto", metadata={
        "help": "auto (the first visible CUDA device, else the CPU), cpu, cuda or cuda:N "
                "(this host's own)"})
    bf16: bool = field(default=True, metadata={
        "help": "bf16 autocast on CUDA; false for GPUs without bf16. The CPU stays fp32"})
    # Measured on the CPU demo only (BENCHMARKS.md): +3.9% images/s for 19.2 s of compiling
    # per trial; no GPU figure yet.
    compile: bool = field(default=False, metadata={
        "help": "run the model through torch.compile, full-size batches only; costs a "
                "compilation per trial (this host's own)"})

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
