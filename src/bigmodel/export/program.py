"""A model's forward as a graph: captured with ``torch.export``, saved as a ``.pt2`` file, run without
the model's code.

:func:`capture` is the one place a module is traced, for this file's programs and for ONNX
(``export/onnx.py`` converts the same ``ExportedProgram``). What it takes is generic: a module whose
forward takes the tensors of ``inputs`` positionally, in the dict's order, and the axes that may vary
between calls. Its outputs may be a tensor, a tuple or a dict of tensors; they are named by
:func:`output_names`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import traceback
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import _pytree as pytree

from bigmodel.errors import UserError

BATCH = "batch"
PROGRAM_FORMAT = 1  # the format of the names this file stores beside a program ("bigmodel.json")


class Positional(nn.Module):
    """``module(*tensors)``: what ``torch.export`` traces, so every model is called as the task calls it.

    Kept as a module (not a function) so the traced parameters keep the model's own names
    (``module.blocks.0.attn.q.weight``).
    """

    def __init__(self, module: nn.Module, seen: Callable[[pytree.TreeSpec], None] = lambda spec: None):
        super().__init__()
        self.module = module
        # What the model returned (named tuples included) goes to ``seen``, a closure: torch.export
        # restores the module's own attributes (a dict's contents too) after tracing.
        self.seen = seen

    def forward(self, *tensors: torch.Tensor) -> Any:
        outputs = self.module(*tensors)
        self.seen(pytree.tree_flatten(outputs)[1])
        return _plain(outputs)


def _plain(value: Any) -> Any:
    """Named tuples as dicts of their fields: ``torch.export.save`` cannot serialise a named tuple type
    nobody registered with it, and a dict keeps the field names as output names (``log_probs``)."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {field: _plain(v) for field, v in zip(value._fields, value, strict=True)}
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    return value


def task_signature(task, model: nn.Module, batch: dict) -> tuple[nn.Module, dict, dict]:
    """``(module, inputs, dynamic)``: what a task's graph computes for a batch from ``task.collate``
    (``Task.export_signature``: the module, the batch's tensors it takes, as ``forward`` passes them,
    and their axes that vary between batches)."""
    method = getattr(task, "export_signature", None)
    if method is None:
        raise UserError(
            f"export: task '{getattr(task, 'name', '') or type(task).__name__}' does not say what its graph "
            "takes (Task.export_signature), so it cannot be exported."
        )
    module, inputs, dynamic = method(model, batch)
    return module, check_inputs(inputs), dynamic


def batch_axes(inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[int, str]]:
    """Axis 0 of every input (that has one) is the batch: the default dynamic axes."""
    return {name: {0: BATCH} for name, tensor in inputs.items() if tensor.ndim}


def capture(
    module: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
) -> ExportedProgram:
    """Trace ``module(*inputs.values())`` in eval mode with ``torch.export.export``.

    Args:
        module: any ``nn.Module``; it runs in eval mode (no dropout, BatchNorm's running statistics)
            and its modes are restored afterwards.
        inputs: name -> example tensor, in the order the forward takes them.
        dynamic: name -> {axis: dim name} of the axes that may differ from the example's (``None``:
            :func:`batch_axes`). If the model fixes the size of a named axis, ``torch.export``
            refuses, and so does this function; sizes the model ties together (input_ids and
            attention_mask lengths) are found by tracing. The example must be at least 2 long on
            each named axis (torch.export fixes axes of size 0 or 1).

    Raises:
        UserError: bad inputs or axes, or a model ``torch.export`` cannot trace (the message names
            the model's family, the reason and the line of its code that stops the trace).
    """
    inputs = check_inputs(inputs)
    dynamic = check_axes(inputs, batch_axes(inputs) if dynamic is None else dynamic)
    # Dim.DYNAMIC: torch.export infers each axis's range and any equalities, and raises if it has to
    # specialise one; the names only label the ONNX axes (export/onnx.py).
    specs = tuple(dict.fromkeys(dynamic.get(name, {}), Dim.DYNAMIC) or None for name in inputs)
    try:
        # On failure torch.export prints the partial graph to stderr; the error below says what matters.
        specs_seen: list[pytree.TreeSpec] = []
        positional = Positional(module, lambda spec: specs_seen.append(spec))
        # A fresh compiler cache: torch's scan (the rnn family's export path) goes through dynamo, and
        # state left by an earlier export made the next one specialise its lengths (an ONNX export of
        # gru-tiny, then torch.export of lstm-tiny: "specialized it to be a constant (7)").
        torch._dynamo.reset()
        with eval_mode(module), quiet(), trace_context(), contextlib.redirect_stderr(io.StringIO()):
            program = torch.export.export(
                positional, tuple(inputs.values()), dynamic_shapes=(specs,), strict=False
            )
        program.model_out_spec = specs_seen[-1]  # what the model returned, before _plain
        return program
    except Exception as exc:  # torch.export reports every refusal as some exception of its own
        raise UserError(
            f"export: the {family_of(module)} model cannot be exported: torch.export could not trace it "
            f"({reason(exc, list(inputs))})."
        ) from exc


def check_inputs(inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if not isinstance(inputs, Mapping) or not inputs:
        raise UserError(f"export: example inputs must be a non-empty dict of name -> tensor, got {inputs!r}.")
    for name, tensor in inputs.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"export: input name {name!r} must be an identifier (it names a graph input).")
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"export: input '{name}' must be a tensor, got {type(tensor).__name__}.")
    return dict(inputs)


def check_axes(
    inputs: Mapping[str, torch.Tensor], dynamic: Mapping[str, Mapping[int, str]]
) -> dict[str, dict[int, str]]:
    for name, axes in dynamic.items():
        if name not in inputs:
            raise UserError(f"export: dynamic axes name input '{name}', which is not one of {list(inputs)}.")
        for axis, label in axes.items():
            ndim = inputs[name].ndim
            if not isinstance(axis, int) or not 0 <= axis < ndim:
                raise UserError(
                    f"export: dynamic axis {axis!r} of input '{name}' does not exist (it has {ndim} axes)."
                )
            if not isinstance(label, str) or not label:
                raise UserError(f"export: dynamic axis {axis} of input '{name}' needs a name, got {label!r}.")
            if inputs[name].shape[axis] < 2:
                raise UserError(
                    f"export: axis {axis} ('{label}') of example input '{name}' has size "
                    f"{inputs[name].shape[axis]}; trace on an example of size >= 2 there (torch.export "
                    "treats sizes 0 and 1 as fixed). The graph then takes size 1 too."
                )
    return {name: dict(axes) for name, axes in dynamic.items()}


@contextlib.contextmanager
def trace_context() -> Iterator[None]:
    """Tracing under the math attention backend.

    Why: on CPU, ``scaled_dot_product_attention`` picks its flash kernel or the math one depending on
    the mask's strides, and the two return different memory layouts. ONNX conversion retraces the
    graph, so a ``reshape`` traced as a view of one layout meets the other (T5's relative-position
    bias: "Cannot view a tensor with shape ... as a tensor with shape ..."). The backend only changes
    the layout tracing assumes: the graph holds the SDPA operator itself, and ONNX Runtime or a loaded
    program chooses its own kernel.
    """
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torch's notes that say nothing about the user's model (pytree deprecations while
    saving, torchvision operators the ONNX registry skips because torchvision is not installed)."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "torch.fx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch|copyreg")
        # Axes torch.export found equal (two inputs' batch) keep the first name given.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
        # nn.LSTM/GRU re-point their _flat_weights list while traced; the weights are exported all the same.
        warnings.filterwarnings("ignore", message=".*were assigned during export", category=UserWarning)
        # The ONNX optimiser folds constants with onnx's reference ops, which warn on log(0) and the like.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="onnx")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def family_of(module: nn.Module) -> str:
    """The registered family of ``module`` or of the backbone inside it (found by its config's
    class), else the module's class name: what an export error names."""
    from bigmodel.models.registry import all_families

    config_types = {family.config_cls: family.name for family in all_families()}
    for sub in module.modules():
        name = config_types.get(type(getattr(sub, "config", None)))
        if name:
            return name
    return type(module).__name__


def reason(exc: BaseException, names: list[str] | None = None) -> str:
    """One line for an export failure: the exception's first line (with its first item when it is a
    heading), torch's ``L['tensors'][i].size()[k]`` said as ``axis k of input 'name'``, and the
    innermost line of bigmodel (outside export/) the traceback passes: where the model does what
    cannot be traced."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    text = re.sub(r"\s*For more information.*$", "", lines[0])  # torch's pointer to its own logs
    if len(lines) > 1 and lines[1].startswith("- "):  # "Constraints violated ...!" then "- why"
        text += " " + lines[1][2:].split(". ")[0]
    elif text.endswith(":") and len(lines) > 1:
        text += " " + lines[1]
    if names:

        def said(match: re.Match) -> str:
            index, axis = int(match[1]), match[2] or match[3]
            name = f"input '{names[index]}'" if index < len(names) else match[0]
            return f"axis {axis} of {name}" if axis else name

        text = re.sub(
            r"(?:L|inputs)\['tensors'\]\[(\d+)\](?:\.size\(\)\[(\d+)\]|\.shape\[(\d+)\])?", said, text
        )
    text = f"{type(exc).__name__}: {text}"
    package = Path(__file__).resolve().parents[1]
    frames = [
        f
        for e in _chain(exc)
        for f in traceback.extract_tb(e.__traceback__)
        if Path(f.filename).resolve().is_relative_to(package)
        and not Path(f.filename).resolve().is_relative_to(package / "export")
    ]
    if frames:
        f = frames[-1]
        text += f"; at {Path(f.filename).resolve().relative_to(package.parent)}:{f.lineno}: {f.line}"
    return text


def _chain(exc: BaseException) -> list[BaseException]:
    found = []
    while exc is not None and exc not in found:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def output_names(program: ExportedProgram, inputs: list[str] = ()) -> list[str]:
    """Names of the flattened outputs: ``output`` for a lone tensor, a dict's keys, ``output_0``...
    for a tuple, joined with ``_`` when nested (``boxes_0``); a name an input already has gets
    ``_out`` (CTC's output ``lengths`` beside the input ``lengths``: ONNX names values once)."""
    spec = program.call_spec.out_spec
    leaves = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    names = [_name(path) for path, _ in pytree.tree_flatten_with_path(leaves)[0]]
    return [f"{name}_out" if name in inputs else name for name in names]


def _name(path: tuple) -> str:
    if not path:
        return "output"
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    named = isinstance(path[0], pytree.GetAttrKey) or isinstance(getattr(path[0], "key", None), str)
    return "_".join(parts) if named else "output_" + "_".join(parts)


def describe_outputs(spec: pytree.TreeSpec) -> Any:
    """The structure of a graph's outputs as JSON (what :func:`rebuild_outputs` reads back): ``"tensor"``,
    ``{"tuple": [...]}``, ``{"list": [...]}``, ``{"dict": {key: ...}}`` or ``{"namedtuple":
    "module:Name", "items": [...]}``. Kept beside a graph so that whoever runs it hands its flat
    outputs back in the shape the model returned them (a task's ``CTCOutputs``, a dict of heads)."""
    if spec.is_leaf():
        return "tensor"
    children = [describe_outputs(child) for child in spec.children()]
    if spec.type is tuple:
        return {"tuple": children}
    if spec.type is list:
        return {"list": children}
    if spec.type is dict:
        if not all(isinstance(key, str) for key in spec.context):
            raise UserError(f"export: output dict keys must be strings, got {spec.context!r}.")
        return {"dict": dict(zip(spec.context, children, strict=True))}
    kind = spec.context if isinstance(spec.context, type) else spec.type
    if isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields"):
        return {"namedtuple": f"{kind.__module__}:{kind.__qualname__}", "items": children}
    raise UserError(
        f"export: the model returns a {getattr(kind, '__name__', kind)} among its outputs; an exported "
        "graph returns a tensor, a tuple, a named tuple or a dict of them."
    )


def rebuild_outputs(structure: Any, flat: list, where: str = "graph") -> Any:
    """The flat output tensors of a graph, in graph order, nested as ``structure``
    (:func:`describe_outputs`) says.

    Raises:
        UserError: the structure is damaged, names a type that cannot be imported, or does not hold
            as many tensors as the graph returned (``where`` names the file).
    """
    leaves = list(flat)
    taken = 0

    def build(node):
        nonlocal taken
        if node == "tensor":
            if taken == len(leaves):
                raise UserError(f"{where}: the graph returns {len(leaves)} outputs, its description more.")
            taken += 1
            return leaves[taken - 1]
        if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("tuple"), list):
            return tuple([build(n) for n in node["tuple"]])
        if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("list"), list):
            return [build(n) for n in node["list"]]
        if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("dict"), dict):
            return {k: build(n) for k, n in node["dict"].items()}
        if (
            isinstance(node, dict)
            and isinstance(node.get("namedtuple"), str)
            and isinstance(node.get("items"), list)
        ):
            return _named_tuple(node["namedtuple"], where)(*[build(n) for n in node["items"]])
        raise UserError(f"{where}: damaged output structure {node!r}; export the run again.")

    rebuilt = build(structure)
    if taken != len(leaves):
        raise UserError(f"{where}: the graph returns {len(leaves)} outputs, its description fewer.")
    return rebuilt


def _named_tuple(spec: str, where: str) -> type:
    import importlib

    module, _, name = spec.partition(":")
    try:
        kind = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{where}: its outputs are a {spec}, which cannot be imported here.") from None
    if not (isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")):
        raise UserError(f"{where}: its outputs name {spec}, which is not a named tuple.")
    return kind


def describe_graph(program: ExportedProgram, inputs: list[str], module: nn.Module, model=None) -> dict:
    """What a saved graph carries about itself (``bigmodel.json`` in a program, the ``bigmodel`` metadata
    entry of an ONNX file): input and output names, the outputs' structure, and, when ``model`` is the
    task's trained model, what serving the graph in its place needs to know — whether the graph is the
    model's own forward (``module is model``; else a wrapper the task does not call), whether the model
    decodes with a KV cache (its ``decoder/`` graphs, not this one, generate), and the names of the
    model's parts (children, ``config``) a task might read outside the graph (a CRF)."""
    described = {"format": PROGRAM_FORMAT, "inputs": list(inputs), "outputs": output_names(program, inputs),
                 "structure": describe_outputs(getattr(program, "model_out_spec", None)
                                               or program.call_spec.out_spec)}  # fmt: skip
    if model is not None:
        parts = [name for name, _ in model.named_children()]
        parts += [name for name in ("config",) if hasattr(model, name)]
        described |= {"is_model": module is model, "generates": hasattr(model, "new_cache"),
                      "model_parts": sorted(set(parts))}  # fmt: skip
    return described


def flat_outputs(outputs: Any) -> list[torch.Tensor]:
    """The output tensors in graph order; anything but tensors (a module, None) is refused."""
    leaves = pytree.tree_leaves(outputs)
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise UserError(
                f"export: the model returns a {type(leaf).__name__} among its outputs; an exported graph "
                "returns tensors only (wrap the model so that its forward returns a tensor, a tuple or a "
                "dict of tensors)."
            )
    return leaves


def run_reference(module: nn.Module, inputs: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The module's own outputs for ``inputs``, flattened, in eval mode (what an export must equal)."""
    with eval_mode(module), torch.no_grad():
        return flat_outputs(module(*inputs.values()))


def max_difference(names: list[str], got: list, expected: list[torch.Tensor], atol: float) -> float:
    """Max |got - expected| over every output (equal infinities count as equal); a shape mismatch or a
    difference above ``atol`` is refused naming the output."""
    if len(got) != len(expected):
        raise UserError(f"export: the graph returns {len(got)} outputs, the model {len(expected)}.")
    worst = 0.0
    for name, a, b in zip(names, got, expected, strict=True):
        a = torch.as_tensor(a)
        if tuple(a.shape) != tuple(b.shape):
            raise UserError(
                f"export: output '{name}' has shape {tuple(a.shape)}, the model's {tuple(b.shape)}."
            )
        if a.numel() == 0:
            continue
        a, b = a.double(), b.detach().cpu().double()
        same_infinity = torch.isinf(a) & (a == b)  # masked scores (-inf) match when both are -inf
        diff = (a - b).masked_fill(same_infinity, 0.0).abs().max().item()
        if not diff <= atol:  # NaN fails too; an infinity on one side only is an infinite difference
            raise UserError(
                f"export: output '{name}' differs from the model's by {diff:.3g} (> atol {atol:g}); "
                "the exported graph does not compute what the model does."
            )
        worst = max(worst, diff)
    return worst


# --- torch.export programs ---------------------------------------------------------------------------


def export_program(
    model: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | Path,
    dynamic: Mapping[str, Mapping[int, str]] | None = None,
    trained: nn.Module | None = None,
) -> Path:
    """Capture ``model(*example_inputs.values())`` and save it with ``torch.export.save`` (a ``.pt2``
    archive holding the graph, its weights and, as ``bigmodel.json``, :func:`describe_graph`: input and
    output names, the outputs' structure; ``trained``: the task's model, when ``model`` is it or wraps
    it, so that the description says whether the graph can stand in for it).

    Returns:
        ``path``; :func:`load_program` runs it without the model's code.
    """
    program = capture(model, example_inputs, dynamic)
    names = describe_graph(program, list(example_inputs), model, trained)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        torch.export.save(program, path, extra_files={"bigmodel.json": json.dumps(names)})
    return path


def export_task_program(task, model: nn.Module, batch: dict, path: str | Path) -> Path:
    """:func:`export_program` of what ``task.export_signature(model, batch)`` names."""
    module, inputs, dynamic = task_signature(task, model, batch)
    return export_program(module, inputs, path, dynamic, trained=model)


class Program:
    """A saved program, called with tensors by name: ``program(input_ids=..., attention_mask=...)``
    returns ``{output name: tensor}``.

    Attributes:
        inputs, outputs: the names, in graph order.
        description: what :func:`describe_graph` saved beside the graph.
    """

    def __init__(self, path: str | Path):
        extra = {"bigmodel.json": ""}
        try:
            with quiet():
                self.program = torch.export.load(Path(path), extra_files=extra)
            names = json.loads(extra["bigmodel.json"])
            self.inputs, self.outputs = list(names["inputs"]), list(names["outputs"])
            self.description = names
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path}: not a program written by export_program ({exc}).") from None
        self.module = self.program.module()

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        missing = [n for n in self.inputs if n not in inputs]
        extra = [n for n in inputs if n not in self.inputs]
        if missing or extra:
            raise UserError(f"program inputs: expected {self.inputs}, missing {missing}, unknown {extra}.")
        try:
            with torch.no_grad():
                outputs = flat_outputs(self.module(*(inputs[n] for n in self.inputs)))
        except (RuntimeError, AssertionError, ValueError) as exc:  # the program's own shape checks
            raise UserError(f"program inputs: {str(exc).splitlines()[0]}") from None
        return dict(zip(self.outputs, outputs, strict=True))


def load_program(path: str | Path) -> Program:
    """The program :func:`export_program` saved at ``path``."""
    return Program(path)


def verify_program(
    program: str | Path | Program, model: nn.Module, inputs: Mapping[str, torch.Tensor], atol: float = 1e-4
) -> float:
    """Run the saved program (a path, or a loaded :class:`Program`) and ``model`` on ``inputs``; return
    the max absolute difference.

    Raises:
        UserError: an output differs by more than ``atol``, or has another shape.
    """
    program = program if isinstance(program, Program) else load_program(program)
    got = program(**inputs)
    return max_difference(program.outputs, list(got.values()), run_reference(model, inputs), atol)
