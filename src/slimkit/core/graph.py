"""The graph layer shared by every technique family: torch.fx tracing with a one-line error naming what could not
be traced, BatchNorm folding, layer patterns, module replacement, input covariances (calibration statistics)."""
from __future__ import annotations

import copy
import operator
import dataclasses
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError, first_line, user_frame

_A = torch.ops.aten
PASSTHROUGH_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)
# the ATen forms appear in the graphs of .pt2 programs (modules_from_program)
PASSTHROUGH_FUNCS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout, _A.view.default, _A.reshape.default,
                     _A.flatten.using_ints, _A.max_pool2d.default, _A.max_pool1d.default, _A.dropout.default,
                     _A.contiguous.default}
PASSTHROUGH_METHODS = {"view", "reshape", "flatten", "contiguous"}
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCS = {F.relu, torch.relu, F.relu6, _A.relu.default, _A.relu_.default}


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:150]
        raise ConfigError(f"cannot trace {type(model).__name__} with torch.fx ({first}); models with data-dependent "
                          "control flow need the ONNX-level techniques (e.g. quantize.int8_dynamic)") from None


def module_of(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def is_passthrough(gm, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), PASSTHROUGH_MODULES)
    if node.op == "call_function":
        return node.target in PASSTHROUGH_FUNCS
    if node.op == "call_method":
        return node.target in PASSTHROUGH_METHODS
    return False


def is_relu(gm, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module_of(gm, node), RELU_MODULES)
    return node.op == "call_function" and node.target in RELU_FUNCS


def fold_batchnorm(model: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """Fold every BatchNorm that directly follows a Conv (and is its only user)
    into that Conv. Returns the traced copy and the names of folded BNs."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    gm = trace(copy.deepcopy(model).eval())
    folded = []
    for node in list(gm.graph.nodes):
        bn = module_of(gm, node)
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        src = node.args[0]
        conv = module_of(gm, src) if isinstance(src, fx.Node) else None
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or len(src.users) != 1:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        set_module(gm, src.target, fused)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded.append(node.target)
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, folded


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name``."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


@torch.no_grad()
def input_covariances(model: nn.Module, split, names: list[str]) -> dict[str, torch.Tensor]:
    """Sum of x x^T of each named layer's inputs (last dimension) over ``split``, float64:
    the Hessian of a Linear layer's output error (GPTQ) and the whitening of data-aware SVD."""
    cov: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(mod, args, out) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            cov[name] = cov.get(name, 0) + x.T @ x
        return fn

    hooks = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for x, _ in split.batches(64):
            model(*x)
    finally:
        for h in hooks:
            h.remove()
    return cov


# ----------------------------------------------------------------------------- torch.export capture
#
# torch.fx symbolic tracing sees a model as a graph of module calls but stops at control flow, ``int(Proxy)`` and
# data-dependent slicing, which every Hugging Face model has. torch.export (non-strict, dynamic batch) runs the
# model's Python for real and records ATen ops, each tagged with the stack of modules that issued it
# (``nn_module_stack``) and each parameter read with its owner; ``Captured`` turns that into the module-level view
# the techniques need: which leaf modules are called, in what order, how often, which ATen ops each issued, and
# which parameters are read directly by a parent's code instead of through their module's call.

CONV_OPS = {"conv1d", "conv2d", "convolution"}
LAYER_OPS = CONV_OPS | {"linear"}  # the ATen ops of the layers techniques replace
_BN_OPS = {"_native_batch_norm_legit_no_training", "batch_norm", "_native_batch_norm_legit", "native_batch_norm"}
_ANCHOR_OPS = CONV_OPS | _BN_OPS | {"linear", "embedding", "layer_norm", "group_norm", "gru", "lstm", "rnn_tanh",
                                     "addmm", "mm", "matmul"}


def op_name(node: fx.Node) -> str:
    """The ATen op of a node without overload: ``linear`` for ``aten.linear.default``."""
    t = node.target
    name = getattr(t, "__name__", str(t))
    return name.split(".")[0]


@dataclasses.dataclass
class ModuleCall:
    """One leaf module as the captured graph saw it: how often it ran and the ATen ops it issued."""

    name: str
    type_name: str
    calls: int = 0
    nodes: list = dataclasses.field(default_factory=list)


class Captured:
    """A ``torch.export`` capture of a model and its module-level view (see the comment above). ``model`` is the
    copy that was captured (in eval mode, with the rewrites named in ``split_attention`` applied)."""

    def __init__(self, program, model: nn.Module, split_attention: Optional[list] = None):
        self.program, self.model, self.split_attention = program, model, split_attention or []
        self.graph = program.graph
        params = {s.arg.name: s.target for s in program.graph_signature.input_specs
                  if getattr(s.arg, "name", None) and s.target is not None}
        self.params: dict[str, str] = params  # placeholder name -> parameter/buffer path in ``model``
        self.calls: dict[str, ModuleCall] = {}
        self.param_readers: dict[str, set] = {}  # parameter name -> innermost module paths of the ops reading it
        self._owner: dict[fx.Node, str] = {}
        for node in self.graph.nodes:
            if node.op != "call_function":
                continue
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            path = "" if path.startswith("_empty") else path
            self._owner[node] = path
            for a in node.args:
                if isinstance(a, fx.Node) and a.op == "placeholder" and a.name in params:
                    self.param_readers.setdefault(params[a.name], set()).add(path)
            if not path:
                continue
            call = self.calls.get(path)
            if call is None:
                try:
                    mod = model.get_submodule(path)
                except AttributeError:
                    continue
                call = self.calls[path] = ModuleCall(path, type(mod).__name__)
            call.nodes.append(node)
            if op_name(node) in _ANCHOR_OPS:
                call.calls += 1

    def owner(self, node: fx.Node) -> str:
        return self._owner.get(node, "")

    def called(self, types: tuple) -> list[str]:
        """Names of the leaf modules of ``types`` that the model really calls (in call order)."""
        return [c.name for c in self.calls.values() if c.calls and isinstance(self.model.get_submodule(c.name), types)]

    def read_by_parent(self, name: str) -> str:
        """For a module whose weight is read by another module's code (``nn.MultiheadAttention`` reading its
        ``out_proj``): that module's path; '' when the module is called itself."""
        readers = self.param_readers.get(f"{name}.weight", set()) - {name}
        return sorted(readers)[0] if readers else ""

    def conv_bn_pairs(self) -> list[tuple[str, str]]:
        """(conv, batchnorm) module pairs where the BatchNorm's only input is the convolution's output, the
        convolution feeds nothing else, and each module runs once: the pairs that fold."""
        pairs = []
        for node in self.graph.nodes:
            if node.op != "call_function" or op_name(node) not in _BN_OPS or not node.args:
                continue
            src = node.args[0]
            if not isinstance(src, fx.Node) or op_name(src) not in CONV_OPS or len(src.users) != 1:
                continue
            conv, bn = self.owner(src), self.owner(node)
            if conv and bn and conv != bn and self.calls[conv].calls == 1 and self.calls[bn].calls == 1:
                pairs.append((conv, bn))
        return pairs


def capture(model: nn.Module, example: tuple, *, what: str = "this technique",
            split_attention: bool = False) -> Captured:
    """``torch.export`` (non-strict) of ``model`` in eval mode on ``example`` with a dynamic batch dimension (a
    static one when the model fixes its batch); a one-line ``ConfigError`` naming the construct and the line of
    code that stopped it otherwise. The user's model is not touched (a copy is captured); ``split_attention``
    first replaces that copy's ``nn.MultiheadAttention`` layers by Linear-based ones (``core.rewrite``)."""
    import warnings

    from torch.export import Dim, export

    from .rewrite import split_attention as split

    m = copy.deepcopy(model).eval()
    split_names = split(m) if split_attention else []
    example = tuple(example)
    dyn = tuple({0: Dim("batch", min=1)} for _ in example) if all(t.shape[0] >= 2 for t in example) else None
    last: Optional[BaseException] = None
    for shapes in ([dyn, None] if dyn is not None else [None]):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return Captured(export(m, example, dynamic_shapes=shapes, strict=False), m, split_names)
        except Exception as e:  # noqa: BLE001 - torch raises many types; classified in the message
            last = e
    why = first_line(last, 150)
    if "data-dependent" in why or "GuardOnDataDependent" in type(last).__name__:
        why = "it branches on the values of its input (data-dependent control flow)"
    raise ConfigError(f"cannot capture {type(model).__name__} with torch.export ({why})"
                      f"{user_frame(last, libraries=True)}; {what} needs a graph of the model: the ONNX-level "
                      "techniques (quantize.int8_dynamic, prune.unstructured) still apply") from None


def locate_op(model: nn.Module, example: tuple, op: str = "", node_name: str = "") -> str:
    """Where in the user's model an ATen op comes from, for a converter's error: ``layer head.pool (CumPool) at
    model.py:12``; '' when it cannot be told. ``op``: e.g. ``aten.cummax.default`` (overload optional);
    ``node_name``: the graph node the converter named (``cummax``). The model is captured again (a copy, in eval
    mode, static shapes): converters run torch.export themselves and keep only the op and node name in their
    messages."""
    import re
    import warnings

    from .errors import is_user_file

    want = op.replace("torch.ops.", "").split(".")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.export.export(copy.deepcopy(model).eval(), tuple(example), strict=False)
    except Exception:  # noqa: BLE001 - the locator is best effort; the converter's own message still stands
        return ""
    hits = []
    for node in prog.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target).replace("torch.ops.", "")
        if (node_name and node.name == node_name) or (len(want) >= 2 and target.split(".")[:2] == want[:2]):
            hits.append(node)
    if not hits:
        return ""
    node = hits[0]
    stack = node.meta.get("nn_module_stack") or {}
    path, kind = (list(stack.values())[-1] if stack else ("", None))
    kind = getattr(kind, "__name__", str(kind).rsplit(".", 1)[-1].strip("'>")) if kind is not None else ""
    where = f"layer {path} ({kind})" if path and not path.startswith("_empty") else "the model's own forward"
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    line = next((f" at {f}:{n}" for f, n in reversed(frames) if is_user_file(f)), "")
    more = f" (and {len(hits) - 1} more use{'s' if len(hits) > 2 else ''})" if len(hits) > 1 else ""
    return f"{where}{line}{more}"


# ----------------------------------------------------------------------------- .pt2 programs as modules
#
# A torch.export program holds no nn.Linear: its graph calls ``aten.linear(x, weight, bias)`` on lifted
# parameters. ``modules_from_program`` gives the layers back: each linear/convolution op whose weights are the
# program's own (read by that op alone) becomes a call of a real module holding those parameters, in a
# plain fx GraphModule (flat inputs, no pytree wrapper, no shape guards) that every technique can work on.



def _attr(gm, node):
    return gm.get_submodule(node.target.rpartition(".")[0]) if "." in node.target else gm


def _params(gm, args):
    """The (weight, bias) tensors behind the get_attr arguments of an ATen linear/convolution call."""
    def fetch(n):
        return getattr(_attr(gm, n), n.target.rpartition(".")[2])
    return fetch(args[1]), (fetch(args[2]) if len(args) > 2 and args[2] is not None else None)


def _batch_norm_module(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    """The BatchNorm module behind an inference-mode ``aten.batch_norm`` of a program (the op fixes the running
    statistics: a program exported in eval mode keeps them frozen in training too). As a module, recovery
    fine-tuning after pruning re-estimates them, as it does for the same model given as Python code; in eval mode it
    computes what the op did."""
    x, w, b, mean, var = node.args[:5]
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(getattr(val, "ndim", None))
    if cls is None:
        return None

    def fetch(n):
        return getattr(_attr(gm, n), n.target.rpartition(".")[2]).detach()

    momentum, eps = node.args[6], node.args[7]
    bn = cls(fetch(mean).shape[0], eps=eps, momentum=momentum)
    bn.weight = nn.Parameter(fetch(w).clone())
    bn.bias = nn.Parameter(fetch(b).clone())
    bn.running_mean.copy_(fetch(mean))
    bn.running_var.copy_(fetch(var))
    return bn.eval()


def _owned(node, users=1) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == users


class ProgramModule(nn.Module):
    """Holds the module of a loaded ``torch.export`` program (``modules_from_program``). Such modules refuse
    ``.eval()``/``.train()`` (their mode is fixed at export), so the switch stops here. The ONNX exporter takes
    the torch.export route for models that contain one (their graphs compute sizes from the batch)."""

    def __init__(self, gm: nn.Module):
        super().__init__()
        self.gm = gm

    def train(self, mode: bool = True):  # noqa: D102 - see class docstring
        self.training = mode
        for m in self.gm.modules():  # the layers given back as modules follow (BatchNorm updates its statistics)
            m.training = mode  # the flag itself: the program's own module refuses .train()
        return self

    def forward(self, *args):
        return self.gm(*args)


def holds_program(model: nn.Module) -> bool:
    return any(isinstance(m, ProgramModule) for m in model.modules())


#: recurrent ATen ops of a program -> the module that owns their flat weights (``modules_from_program``)
_RECURRENT = {_A.gru.input: nn.GRU, _A.lstm.input: nn.LSTM, _A.rnn_tanh.input: nn.RNN, _A.rnn_relu.input: nn.RNN}
RECURRENT_OPS = tuple(op._opname for op in _RECURRENT)


def program_recurrent_ops(model: nn.Module) -> dict[str, str]:
    """The recurrent ATen ops of the loaded ``.pt2`` programs inside ``model`` (a program keeps ``nn.GRU``/``nn.LSTM``
    as one op over flat weights, not a module): owner name (the prefix of its first weight) -> op name."""
    out = {}
    for m in model.modules():
        if not isinstance(m, ProgramModule):
            continue
        for n in m.gm.graph.nodes:
            op = getattr(n.target, "_opname", "") if n.op == "call_function" else ""
            if op in RECURRENT_OPS:
                weights = next((a for a in n.args if isinstance(a, (list, tuple))), [])
                first = next((w.target for w in weights if isinstance(w, fx.Node) and w.op == "get_attr"), n.name)
                out[first.rpartition(".")[0] or first] = op
    return out


def program_fixed_units(model: nn.Module) -> list[str]:
    """What a loaded ``.pt2`` program inside ``model`` may hold that structured pruning cannot shrink: attention
    (``scaled_dot_product_attention``: its head count is a constant of the program's reshapes, which
    ``prune/program_heads.py`` rewrites where it can follow the heads) and recurrent ops left as ops."""
    found = []
    for m in model.modules():
        if isinstance(m, ProgramModule):
            ops = {getattr(n.target, "_opname", "") for n in m.gm.graph.nodes if n.op == "call_function"}
            found += ["attention heads"] * ("scaled_dot_product_attention" in ops)
            found += [f"aten.{op} hidden units" for op in RECURRENT_OPS if op in ops]
    return list(dict.fromkeys(found))


def modules_from_program(gm: fx.GraphModule) -> fx.GraphModule:
    """The module of a loaded ``ExportedProgram`` (``ep.module()``) with its layers as real modules."""
    graph = copy.deepcopy(gm.graph)
    new = fx.GraphModule(gm, graph)
    graph._codegen = fx.graph.CodeGen()  # flat positional inputs and outputs, traceable again
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target.startswith("_guards"):
            graph.erase_node(node)
        elif node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            # x.size(d), not the ATen op: the ONNX tracer records a Shape op for it instead of baking the example's
            # size into every reshape (a .pt2 exported with a dynamic batch must stay dynamic in ONNX)
            with graph.inserting_before(node):
                size = graph.call_method("size", tuple(node.args))
            size.meta = dict(node.meta)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
        elif node.op == "output" and isinstance(node.args[0], (tuple, list)) and len(node.args[0]) == 1:
            node.args = (node.args[0][0],)  # one output: the tensor, not a 1-tuple
    count = [0]

    def install(node, mod, args) -> None:
        w = node.args[1]
        path = w.target.rpartition(".")[0] or f"layer_{count[0]}"
        count[0] += 1
        name = path if isinstance(new.get_submodule(path), nn.Module) and not list(
            new.get_submodule(path).children()) else f"{path}_mod"
        set_module(new, name, mod)
        with graph.inserting_before(node):
            call = graph.call_module(name, args)
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)

    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        t, a = node.target, node.args
        if t is _A.linear.default and _owned(a[1]) and (len(a) < 3 or a[2] is None or _owned(a[2])):
            w, b = _params(new, a)
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            lin.weight = nn.Parameter(w.detach())
            if b is not None:
                lin.bias = nn.Parameter(b.detach())
            install(node, lin, (a[0],))
        elif t in (_A.conv2d.default, _A.conv1d.default) and _owned(a[1]) and \
                (len(a) < 3 or a[2] is None or _owned(a[2])) and all(not isinstance(v, fx.Node) for v in a[3:]):
            w, b = _params(new, a)
            stride, padding, dilation, groups = (list(a[3:]) + [1, 0, 1, 1][len(a[3:]):])[:4]
            cls = nn.Conv2d if t is _A.conv2d.default else nn.Conv1d
            conv = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                       dilation=dilation, groups=groups, bias=b is not None)
            conv.weight = nn.Parameter(w.detach())
            if b is not None:
                conv.bias = nn.Parameter(b.detach())
            install(node, conv, (a[0],))
        elif t in _RECURRENT and all(_owned(w) for w in a[2]):
            _install_recurrent(new, graph, node)
        elif t is _A.batch_norm.default and a[5] is False and all(_owned(v) for v in a[1:5]):
            bn = _batch_norm_module(new, node)
            if bn is not None:
                install(node, bn, (a[0],))
    dropped = set()
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.users:
            dropped.add(node.target)
            graph.erase_node(node)
    _drop_dead_tensors(new, graph, dropped)
    graph.lint()
    new.recompile()
    new.delete_all_unused_submodules()
    return new


def _drop_dead_tensors(gm: fx.GraphModule, graph: fx.Graph, targets: set) -> None:
    """Delete the tensors no node reads any more (an attention's packed ``in_proj_weight`` once its op is an
    ``nn.Linear`` of its own): left behind they would be counted, saved and shipped twice."""
    live = {n.target for n in graph.nodes if n.op == "get_attr"}
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    for t in targets - live:
        owner, _, attr = t.rpartition(".")
        if any(owner == c or owner.startswith(c + ".") for c in called):
            continue  # a tensor of a module installed at its old path (``out_proj.weight``)
        mod = gm.get_submodule(owner) if owner else gm
        for table in (mod._parameters, mod._buffers):
            table.pop(attr, None)
        if attr in mod.__dict__:
            delattr(mod, attr)


def _install_recurrent(new: fx.GraphModule, graph: fx.Graph, node: fx.Node) -> None:
    """``aten.gru/lstm/rnn_*`` on flat weights -> the ``nn.GRU``/``nn.LSTM``/``nn.RNN`` module that owns them, so the
    techniques that work on recurrent modules (hidden-unit pruning, dynamic int8, unstructured pruning) reach a
    program's recurrent layer too. A zero initial state (``aten.zeros([layers, batch, hidden])``, the module's own
    default) is dropped, so that no constant holds the hidden size; the op's outputs are remapped to the module's
    (LSTM: ``(out, h, c)`` -> ``(out, (h, c))``)."""
    inp, hx, params, has_bias, layers, dropout, _train, bidir, batch_first = node.args
    tensors = [getattr(_attr(new, w), w.target.rpartition(".")[2]) for w in params]
    cls = _RECURRENT[node.target]
    kw = {"nonlinearity": "relu"} if node.target is _A.rnn_relu.input else {}
    w_ih, w_hh = tensors[0], tensors[1]
    gates = {nn.GRU: 3, nn.LSTM: 4, nn.RNN: 1}[cls]
    mod = cls(w_ih.shape[1], w_hh.shape[1], num_layers=layers, bias=has_bias, batch_first=batch_first,
              dropout=dropout, bidirectional=bidir, **kw)
    if len(tensors) != len(mod._flat_weights_names) or w_ih.shape[0] != gates * w_hh.shape[1]:
        return  # a layout this does not know (projections): the op stays as it is
    with torch.no_grad():
        for name, t in zip(mod._flat_weights_names, tensors):
            getattr(mod, name).copy_(t)
    path = params[0].target.rpartition(".")[0]
    name = path if path and not list(new.get_submodule(path).children()) else f"{path or 'rnn'}_mod"
    set_module(new, name, mod)
    states = hx if isinstance(hx, (list, tuple)) else [hx]
    zero = all(isinstance(h, fx.Node) and h.target is _A.zeros.default for h in states)
    with graph.inserting_before(node):
        if zero:
            call = graph.call_module(name, (inp,))
        else:
            call = graph.call_module(name, (inp, tuple(hx) if cls is nn.LSTM else hx))
    call.meta = dict(node.meta)
    for user in list(node.users):
        k = user.args[1] if user.target is operator.getitem else None
        if cls is nn.LSTM and k in (1, 2):
            with graph.inserting_before(user):
                pair = graph.call_function(operator.getitem, (call, 1))
                repl = graph.call_function(operator.getitem, (pair, k - 1))
            user.replace_all_uses_with(repl)
            graph.erase_node(user)
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    for h in states:
        if zero and isinstance(h, fx.Node) and not h.users:
            graph.erase_node(h)


def fixed_batch(program) -> Optional[int]:
    """The batch size a ``torch.export`` program was exported with when its first input's batch is fixed."""
    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    for n in program.graph.nodes:
        if n.op == "placeholder" and n.name in user_inputs:
            val = n.meta.get("val")
            if val is not None and getattr(val, "ndim", 0) and isinstance(val.shape[0], int):
                return int(val.shape[0])
            return None
    return None
