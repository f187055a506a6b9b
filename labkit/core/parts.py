"""One map of a text classifier's parts, per model family: embeddings, blocks, attention, feed-forward, head.

Every technique asks this module for the layers it works on, so none of them knows whether the model is a BERT
or a DistilBERT. A new family is one `Family` entry below. A Hugging Face model of any other family is refused
with a ValueError that names the supported ones; a plain `nn.Module` (a learner's toy network) has no blocks
or head, and its Linear layers all count as "other" layers.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Family:
    """Where one family keeps its parts, as dotted paths (from the base model, or from a block)."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    blocks: str  # the ModuleList of transformer blocks, from the base model
    q: str
    k: str
    v: str
    o: str  # attention output projection
    up: str  # feed-forward: hidden -> intermediate
    down: str  # feed-forward: intermediate -> hidden
    attention: str  # the module that holds the head count and head size
    n_heads: str  # its attribute holding the head count
    structured: bool = True  # heads and neurons can be removed (see prune.structured)


_BERT_LIKE = dict(blocks="encoder.layer", q="attention.self.query", k="attention.self.key",
                  v="attention.self.value", o="attention.output.dense", up="intermediate.dense",
                  down="output.dense", attention="attention.self", n_heads="num_attention_heads")

FAMILIES = (
    Family("BERT", ("bert",), **_BERT_LIKE),
    Family("RoBERTa", ("roberta", "xlm-roberta", "camembert"), **_BERT_LIKE),
    Family("ELECTRA", ("electra",), **_BERT_LIKE),
    Family("DistilBERT", ("distilbert",), blocks="transformer.layer", q="attention.q_lin", k="attention.k_lin",
           v="attention.v_lin", o="attention.out_lin", up="ffn.lin1", down="ffn.lin2", attention="attention",
           n_heads="n_heads"),
    # DeBERTa-v2's relative-position attention reuses (and may add) projections per head; removing heads there
    # is not implemented, so structured pruning refuses it.
    Family("DeBERTa-v2", ("deberta-v2",), blocks="encoder.layer", q="attention.self.query_proj",
           k="attention.self.key_proj", v="attention.self.value_proj", o="attention.output.dense",
           up="intermediate.dense", down="output.dense", attention="attention.self", n_heads="num_attention_heads",
           structured=False),
)

SUPPORTED = ", ".join(f.name for f in FAMILIES)


@dataclass
class Block:
    """One transformer block: its module and the full dotted names of its Linear layers in the model."""

    index: int
    module: nn.Module
    prefix: str  # dotted name of the block in the model
    family: Family

    def name(self, part: str) -> str:
        """Full dotted name in the model of `part` ('q', 'k', 'v', 'o', 'up' or 'down')."""
        return f"{self.prefix}.{getattr(self.family, part)}"

    def get(self, part: str) -> nn.Linear:
        """The Linear layer `part` ('q', 'k', 'v', 'o', 'up' or 'down') of this block."""
        return self.module.get_submodule(getattr(self.family, part))

    def set(self, part: str, layer: nn.Module) -> None:
        """Replace the layer `part` of this block."""
        parent, _, child = getattr(self.family, part).rpartition(".")
        setattr(self.module.get_submodule(parent) if parent else self.module, child, layer)

    @property
    def attention(self) -> nn.Module:
        """The module that holds this block's head count and head size."""
        return self.module.get_submodule(self.family.attention)

    @property
    def n_heads(self) -> int:
        """How many attention heads this block has now."""
        return int(getattr(self.attention, self.family.n_heads))

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return int(self.attention.attention_head_size)

    @property
    def ffn_size(self) -> int:
        """How many feed-forward neurons this block has now."""
        return self.get("up").out_features


ATTENTION = ("q", "k", "v", "o")
FFN = ("up", "down")


def is_hf(model: nn.Module) -> bool:
    """True for a Hugging Face model (it has a config with a model_type)."""
    return isinstance(getattr(getattr(model, "config", None), "model_type", None), str)


def family_of(model: nn.Module) -> Family:
    """The family of a Hugging Face classifier; a ValueError naming the supported families otherwise."""
    if not is_hf(model):
        raise ValueError(f"{type(model).__name__} is not a Hugging Face transformer classifier; labkit's "
                         f"model-level techniques support these families: {SUPPORTED}.")
    kind = model.config.model_type
    for fam in FAMILIES:
        if kind in fam.model_types:
            return fam
    raise ValueError(f"labkit does not support the model family {kind!r} ({type(model).__name__}). Supported "
                     f"families: {SUPPORTED}. Fine-tune one of those (e.g. distilbert-base-uncased), or add an "
                     f"entry to labkit.core.parts.FAMILIES.")


def check_classifier(model: nn.Module) -> Family:
    """The family of `model`, after checking it is a sequence classifier with a head; a ValueError otherwise."""
    fam = family_of(model)
    if not type(model).__name__.endswith("ForSequenceClassification"):
        raise ValueError(f"{type(model).__name__} has no sequence-classification head. Load it with "
                         "transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=N) "
                         "(and fine-tune it, e.g. with labkit.core.model.fine_tune).")
    return fam


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _prefix_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module not found in model")


def blocks(model: nn.Module) -> list[Block]:
    """The transformer blocks of a supported classifier, in order."""
    fam = family_of(model)
    base = _base(model)
    base_prefix = _prefix_of(model, base)
    layers = base.get_submodule(fam.blocks)
    start = f"{base_prefix}.{fam.blocks}" if base_prefix else fam.blocks
    return [Block(i, b, f"{start}.{i}", fam) for i, b in enumerate(layers)]


def embeddings(model: nn.Module) -> nn.Module:
    """The input embeddings module (word, position and type embeddings)."""
    family_of(model)
    return _base(model).embeddings


def block_linears(model: nn.Module, which: tuple[str, ...] = ATTENTION + FFN) -> dict[str, nn.Linear]:
    """The blocks' Linear layers of the kinds in `which` ('q', 'k', 'v', 'o', 'up', 'down'), by full name."""
    out = {}
    for b in blocks(model):
        for part in which:
            out[b.name(part)] = b.get(part)
    return out


def head_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The classification head's Linear layers (with a pooler or pre-classifier where the family has one)."""
    if not is_hf(model):
        return {}
    base = _base(model)
    # The head is what sits outside the base encoder, plus the base's pooler (BERT keeps it inside).
    inside_base = {id(m) for m in base.modules()} if base is not model else set()
    pooler = getattr(base, "pooler", None)
    pooled = {id(m) for m in pooler.modules()} if isinstance(pooler, nn.Module) else set()
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and (id(m) not in inside_base or id(m) in pooled)}


FILTERS = ("all", "blocks", "attention", "ffn", "head")  # the named layer selections of `linears`


def linears(model: nn.Module, filter_fn="blocks") -> dict[str, nn.Linear]:
    """The model's nn.Linear layers by full dotted name, in order, chosen by `filter_fn`: the kit's one selector.

    `filter_fn` is a function `(module, fqn) -> bool`, as torchao's `quantize_` takes, or a name: 'all' (every
    Linear), 'blocks' (every Linear inside a transformer block), 'attention' (q, k, v, o), 'ffn' (up, down) or
    'head' (the classification head, with its pooler or pre-classifier). A plain nn.Module (a learner's toy
    network) has no blocks or head: 'all' and 'blocks' give every Linear, the other names none.

    A model already quantized or compressed is refused (`require_float_layers`), and so is a picked weight that is
    not finite floating point (`check_weight`): no technique works on those.
    """
    if not callable(filter_fn) and filter_fn not in FILTERS:
        raise ValueError(f"filter_fn must be a function (module, fqn) -> bool or one of {', '.join(FILTERS)}; "
                         f"got {filter_fn!r}.")
    require_float_layers(model)
    found = _select(model, filter_fn)
    for name, layer in found.items():  # every technique reads the weights it picks: none may be NaN or integer
        check_weight(layer.weight, f"{name}.weight")
    return found


def _select(model: nn.Module, filter_fn) -> dict[str, nn.Linear]:
    if callable(filter_fn):
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and filter_fn(m, n)}
    kinds = {"blocks": ATTENTION + FFN, "attention": ATTENTION, "ffn": FFN}
    if not is_hf(model):
        found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        return found if filter_fn in ("blocks", "all") else {}
    if filter_fn == "head":
        return head_linears(model)
    if filter_fn == "all":
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if filter_fn == "blocks":  # every Linear inside a block, also family extras (DeBERTa-v2's pos_key_proj, ...)
        return {f"{b.prefix}.{n}": m for b in blocks(model) for n, m in b.module.named_modules()
                if isinstance(m, nn.Linear)}
    return block_linears(model, kinds[filter_fn])


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name` with `new`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def require_not_meta(model: nn.Module) -> None:
    """A ValueError for a model whose tensors are on the meta device: shapes only, no weights to copy or run."""
    require_module(model)
    if any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers()):
        raise ValueError(f"This {type(model).__name__} has no weights (meta device: shapes only, as "
                         "init_empty_weights or torch.device('meta') build it): load it with from_pretrained(...), "
                         "or .to_empty(device='cpu') and load a state dict into it.")


def clone(model: nn.Module, convert=None, buffers: bool = True) -> nn.Module:
    """An independent copy of `model`: new modules and new tensors, so writing into it never changes `model`.

    `convert(t)` makes each parameter and buffer's new tensor (default: `t.clone()`); a cast such as
    `lambda t: t.to(torch.bfloat16)` gives a converted copy without a float32 copy in between. A tensor `convert`
    hands back unchanged, or as a view of the original, is cloned, so the copy never shares memory with `model`.
    `buffers=False` converts the parameters only and clones the buffers as they are (RoPE's `inv_freq` is computed
    with in float32 whatever the weights' dtype). Tied weights stay tied.
    """
    def own(t: torch.Tensor) -> torch.Tensor:
        new = t.clone() if convert is None else convert(t)
        if new.numel() and new.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            new = new.clone()
        return new

    require_not_meta(model)
    return _copy(model, own, own if buffers else torch.Tensor.clone)


def copy_sharing(model: nn.Module, convert=None) -> nn.Module:
    """A copy of `model` whose tensors are `model`'s own (new modules, no new memory), or `convert(t)` of each.

    Only for code that replaces the layers it changes, exports the copy, or writes only the tensors `convert` made
    new, and never hands the copy to a caller: writing into a shared tensor would change `model` too. Public
    functions return `clone`s.
    """
    return _copy(model, (lambda t: t) if convert is None else convert)


def unshare(copy_: nn.Module, original: nn.Module) -> nn.Module:
    """Give `copy_` its own copy of every tensor it still shares with `original`, in place; returns `copy_`.

    For a `copy_sharing` copy whose changed layers were replaced (quantized, exported): what was not replaced is
    cloned now, so the copy can be handed to a caller. Tied weights stay tied.
    """
    theirs = {t.untyped_storage().data_ptr() for t in list(original.parameters()) + list(original.buffers())
              if t.numel()}
    fresh: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for module in copy_.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.numel() and p.untyped_storage().data_ptr() in theirs:
                    if id(p) not in fresh:
                        fresh[id(p)] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                    setattr(module, name, fresh[id(p)])
            for name, b in list(module.named_buffers(recurse=False)):
                if b is not None and b.numel() and b.untyped_storage().data_ptr() in theirs:
                    if id(b) not in fresh:
                        fresh[id(b)] = b.clone()
                    module.register_buffer(name, fresh[id(b)], persistent=name not in module._non_persistent_buffers_set)
    return copy_


def _copy(model: nn.Module, make, make_buffer=None) -> nn.Module:
    require_module(model)
    memo: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for p in model.parameters():  # each tensor once, however many modules hold it (tied weights)
            memo[id(p)] = nn.Parameter(make(p).detach(), requires_grad=p.requires_grad)
        for b in model.buffers():
            memo[id(b)] = (make_buffer or make)(b).detach()
    return copy.deepcopy(model, memo)  # deepcopy takes what memo has for each of those tensors


def summary(model: nn.Module) -> dict:
    """Family, blocks, heads and feed-forward width per block, and head layer names: what the map found."""
    fam = family_of(model)
    bs = blocks(model)
    return {"family": fam.name, "blocks": len(bs), "heads": [b.n_heads for b in bs],
            "ffn": [b.ffn_size for b in bs], "head": list(head_linears(model))}


def input_names(model: nn.Module, tokenizer=None) -> list[str]:
    """The inputs this model's forward takes from a tokenizer (e.g. DistilBERT has no token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    offered = list(getattr(tokenizer, "model_input_names", None) or
                   ["input_ids", "token_type_ids", "attention_mask"])
    return [n for n in offered if n in params]


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (the CPU for a model with none): where its inputs must go."""
    require_not_meta(model)  # every measurement asks where to send its inputs: a model without weights stops here
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def feed(model: nn.Module, inputs: dict) -> dict:
    """The tokenizer's `inputs` this model's forward accepts (a DistilBERT takes no token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and "input_ids" not in params:
        return dict(inputs)  # a wrapper taking **inputs (ONNX Runtime, OpenVINO): it decides
    return {k: v for k, v in inputs.items() if k in params}


def tiny_classifier(family: str = "BERT", num_labels: int = 2, seed: int = 0) -> nn.Module:
    """A tiny random-weight classifier of `family` built from a config (no download): for tests and quick demos.

    Its vocabulary (30522) covers the kit's tokenizer, so real tokenized snippets can run through it.
    """
    import torch
    import transformers as tf

    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=160, num_labels=num_labels)
    builders = {
        "BERT": (tf.BertConfig, tf.BertForSequenceClassification, common),
        "RoBERTa": (tf.RobertaConfig, tf.RobertaForSequenceClassification, common),
        "ELECTRA": (tf.ElectraConfig, tf.ElectraForSequenceClassification, dict(common, embedding_size=32)),
        "DistilBERT": (tf.DistilBertConfig, tf.DistilBertForSequenceClassification,
                       dict(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                            max_position_embeddings=160, num_labels=num_labels)),
        "DeBERTa-v2": (tf.DebertaV2Config, tf.DebertaV2ForSequenceClassification,
                       dict(common, relative_attention=True, position_buckets=16, max_relative_positions=32,
                            pos_att_type=["p2c", "c2p"])),
    }
    if family not in builders:
        raise ValueError(f"Unknown family {family!r}; choose one of {', '.join(builders)}.")
    config_cls, model_cls, kwargs = builders[family]
    torch.manual_seed(seed)
    return model_cls(config_cls(**kwargs)).eval()


# The names the kit gives float dtypes (quant.floats describes each format; PRECISIONS are those a model runs in).
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
               torch.float8_e4m3fn: "fp8_e4m3", torch.float8_e5m2: "fp8_e5m2"}
PRECISIONS = ("fp32", "bf16", "fp16")


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision a whole model can run in ('fp32', 'bf16', 'fp16'); a ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} (fp8 formats "
                         "are only shown in quant.floats.FORMATS: torch has no fp8 matmul on CPU).")
    return {v: k for k, v in DTYPE_NAMES.items()}[precision]


def dtype_of(model: nn.Module) -> str:
    """The precision name of a model's floating weights ('fp32', 'bf16', ...), or 'mixed'."""
    found = {p.dtype for p in model.parameters() if p.is_floating_point()}
    names = [name for dtype, name in DTYPE_NAMES.items() if dtype in found]
    return names[0] if len(names) == 1 else "mixed"


def require_fp32(model: nn.Module, step: str = "int8 conversion") -> None:
    """A ValueError when `model`'s weights are not fp32, saying which order works (for int8 and exports)."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError(f"{step} needs a float32 model, and this one is {dtype_of(model)}. Run {step} on the fp32 "
                         "model (precision.to_precision(model, 'fp32') brings a cast copy back): int8 and a "
                         "bf16/fp16 cast are two alternatives, not steps to stack.")


def cpu_view(model: nn.Module, inplace: bool, what: str) -> nn.Module:
    """A view of the model on the CPU for a CPU-only backend (the model itself with `inplace`); says so when the
    caller's model was elsewhere.

    The view shares the caller's CPU tensors (copy_sharing): every backend here exports the model, or replaces
    its layers with int8 ones built from the float weights, and none writes a float weight. Never hand it to a
    caller as it is: `unshare` it first.
    """
    dev = device_of(model)
    if dev.type != "cpu":
        warnings.warn(f"{what} runs on the CPU only: the returned model is on the CPU, not on {dev}. Compare it "
                      "with a CPU copy of the float model (model.cpu()) when timing.", RuntimeWarning, stacklevel=3)
    return (model if inplace else copy_sharing(model)).cpu()


# --- weights a technique can work on: floating point, finite, and not already quantized -----------------------

RELOAD = ("A technique would spread them (over a quantization group, through a ranking): reload the model, or "
          "retrain it with a lower learning rate if its training diverged; torch.nan_to_num(w) replaces them if you "
          "know why they are there")


def check_weight(w, name: str = "the weight", dim: int | None = None, fix: str = RELOAD) -> torch.Tensor:
    """`w`, after checking it is a finite floating-point tensor (of `dim` dimensions); a TypeError or ValueError
    that names the fix otherwise (`fix`: what to do about NaN or infinite values)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}: pass torch.as_tensor(w).float().")
    if not w.is_floating_point():
        fix = ("pass w.float()" if name == "the weight" else "convert the model with model.float()" if "." in name
               else f"pass {name}.float()")
        raise TypeError(f"{name} is {w.dtype}: weights must be floating point ({fix}); integer values would be "
                        "rounded onto a grid of their own and come back changed.")
    if dim is not None and w.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-D weight ([out, in] for a Linear layer's), got shape "
                         f"{tuple(w.shape)}: pass a layer's weight, or reshape it (w.reshape(1, -1) for one row).")
    if w.device.type == "meta":
        raise ValueError(f"{name} has no values (meta device): load the model with from_pretrained(...), or "
                         ".to_empty(...) it and load a state dict.")
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        nans = int(torch.isnan(w).sum())
        infs = w.numel() - int(finite.sum()) - nans
        raise ValueError(f"{name} has {nans} NaN and {infs} infinite values (of {w.numel()}). {fix}.")
    return w


def _quantized_by_torch(m: nn.Module) -> bool:
    return type(m).__module__.startswith(("torch.ao.nn.quantized", "torch.nn.quantized"))


def _compressed(m: nn.Module) -> bool:
    """torch.ao's quantized modules, and leaf layers that keep integer codes or indices instead of a float weight
    (labkit's int8 embedding, weight-only, int4, CSR layers, an exported runtime's bytes)."""
    if _quantized_by_torch(m):
        return True
    if next(m.children(), None) is not None or "weight" in dict(m.named_parameters(recurse=False)):
        return False
    return any(b.dim() >= 1 and not (b.is_floating_point() or b.dtype == torch.bool) for b in m.buffers(recurse=False))


def compressed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers of `model` that hold quantized or compressed weights instead of float ones, by full name."""
    found: dict[str, nn.Module] = {}
    for n, m in model.named_modules():
        if _compressed(m) and not any(n.startswith(f"{f}.") for f in found):  # not torch.ao's packed parameters
            found[n] = m
    return found


def require_module(model) -> nn.Module:
    """`model`, after checking it is a torch nn.Module; a TypeError saying what to pass otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}: pass the model itself "
                        "(e.g. labkit.core.model.load_baseline()[0]).")
    return model


def require_float_layers(model: nn.Module) -> None:
    """A ValueError when `model` is already quantized or compressed: techniques start from its float weights."""
    require_module(model)
    found = compressed_layers(model)
    if found:
        by_torch = [n for n, m in found.items() if _quantized_by_torch(m)]
        name = (by_torch or list(found))[0]
        kinds = ", ".join(sorted({m._get_name() for m in found.values()}))
        what = "int8-quantized" if by_torch else "quantized or compressed"
        raise ValueError(f"This model is already {what} ({kinds} layers found, e.g. {name or 'the model'}): pass "
                         "the float model it was made from; quantizing, pruning and casting start from float weights.")
