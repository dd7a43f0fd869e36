"""Fuse an exported tower's self-attention blocks into ONNX Runtime's `com.microsoft.Attention` op, for the CPU int8
graph only.

The exporter writes scaled dot-product attention as some twenty plain ONNX nodes per block: the QKV projection, a
reshape and a 5-d transpose into heads, a gather per Q / K / V, K's transpose, two scale Muls, the score MatMul, the
causal mask Add (text tower), Softmax, the value MatMul, a transpose back and a reshape. With the projections in
int8, the transposes, Softmax and the two float MatMuls take about half of the CPU int8 graph's time (ViT-B/32 text
tower, batch 8, on a CPU with AMX int8: 33 ms of 84). ONNX Runtime's Attention kernel does all of it in one pass
per head, and its quantizer turns it into QAttention (int8 QKV projection) like any MatMul.

`com.microsoft` ops run in ONNX Runtime only: this pass is for the graph that ONNX Runtime's CPU provider runs,
never for the fp32, fp16 or TensorRT graphs. The pattern is the one edgeclip's exporter writes; a block that does not
match it exactly is left as it is (and counted), so the result is always a graph that computes the same.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["AttentionFusion", "fuse_attention"]

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class AttentionFusion:
    """What `fuse_attention` did: blocks fused (causal ones among them), Softmax nodes left unfused, and for each
    fused block its QKV projection's node name and the Attention node's name."""

    fused: int
    causal: int
    unmatched: int
    projections: tuple[tuple[str, str], ...] = ()


class _Graph:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        """The value of a small constant (scalars, shapes, indices); None for anything else."""
        if name in self.initializers:
            tensor = self.initializers[name]
            return numpy_helper.to_array(tensor) if int(np.prod(tensor.dims)) <= 8 else None
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        return None

    def made_by(self, name: str, op: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def only_consumer(self, name: str, op: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op or name in self.outputs:
            return None
        return users[0]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _perm(node: onnx.NodeProto) -> list[int]:
    value = _attr(node, "perm", [])
    return [int(v) for v in value] if isinstance(value, list) else []


def _scalar(g: _Graph, name: str) -> float | None:
    value = g.const(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _scaled(g: _Graph, name: str) -> tuple[str, float] | None:
    """`name` = Mul(x, scalar constant): (x, scalar)."""
    mul = g.made_by(name, "Mul")
    if mul is None:
        return None
    for i in (0, 1):
        s = _scalar(g, mul.input[1 - i])
        if s is not None:
            return mul.input[i], s
    return None


def _causal_mask(g: _Graph, name: str) -> bool:
    """Where(Equal(Trilu(Expand(1), upper=0), 0), very negative, 0): the additive causal mask."""
    where = g.made_by(name, "Where")
    if where is None:
        return False
    neg, zero = _scalar(g, where.input[1]), _scalar(g, where.input[2])
    equal = g.made_by(where.input[0], "Equal")
    if neg is None or zero != 0.0 or neg > -1e4 or equal is None:
        return False
    tri_in = [x for x in equal.input if _scalar(g, x) != 0.0]
    if len(tri_in) != 1 or _scalar(g, equal.input[0 if tri_in[0] == equal.input[1] else 1]) != 0.0:
        return False
    trilu = g.made_by(tri_in[0], "Trilu")
    if trilu is None or _attr(trilu, "upper", 1) != 0 or (len(trilu.input) > 1 and trilu.input[1]):
        return False
    expand = g.made_by(trilu.input[0], "Expand")
    return expand is not None and _scalar(g, expand.input[0]) == 1.0


def _heads(g: _Graph, value: str, index: int, perm: onnx.NodeProto) -> bool:
    gather = g.made_by(value, "Gather")
    if gather is None or gather.input[0] != perm.output[0] or _attr(gather, "axis", 0) != 0:
        return False
    idx = g.const(gather.input[1])
    return idx is not None and idx.shape == () and int(idx) == index


def _split_dims(g: _Graph, shape: str) -> tuple[int, int, int] | None:
    """The last three entries (3, heads, head size) of the projection's reshape to (batch, length, 3, heads, head
    size): a constant shape (fixed length) or a Concat of the dynamic batch and length with constants."""
    value = g.const(shape)
    if value is not None:
        return (int(value[2]), int(value[3]), int(value[4])) if value.shape == (5,) else None
    concat = g.made_by(shape, "Concat")
    if concat is None or len(concat.input) != 5:
        return None
    dims = [g.const(x) for x in concat.input[2:]]
    if any(d is None or d.size != 1 for d in dims):
        return None
    three, heads, size = (int(d.reshape(-1)[0]) for d in dims)  # type: ignore[union-attr]
    return three, heads, size


def _merged_width(g: _Graph, shape: str) -> int | None:
    """The last entry of the reshape that merges the heads back to (batch, length, hidden): a constant shape, or a
    Concat of the dynamic batch and length with a constant; None for any other shape."""
    value = g.const(shape)
    if value is not None:
        return int(value[2]) if value.shape == (3,) else None
    concat = g.made_by(shape, "Concat")
    last = g.const(concat.input[2]) if concat is not None and len(concat.input) == 3 else None
    return int(last.reshape(-1)[0]) if last is not None and last.size == 1 else None


def _match(g: _Graph, softmax: onnx.NodeProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """The nodes of one attention block around `softmax` and the Attention node that replaces them, or None."""
    if _attr(softmax, "axis", -1) not in (-1, 3):
        return None
    block = [softmax]
    scores, causal = softmax.input[0], False
    add = g.made_by(scores, "Add")
    if add is not None:
        mask = [x for x in add.input if _causal_mask(g, x)]
        if len(mask) != 1 or g.consumers[scores] != [softmax]:
            return None
        scores, causal = add.input[1] if add.input[0] == mask[0] else add.input[0], True
        block.append(add)
    qk = g.made_by(scores, "MatMul")
    if qk is None or len(g.consumers[scores]) != 1:
        return None
    q_s, k_s = _scaled(g, qk.input[0]), _scaled(g, qk.input[1])
    if q_s is None or k_s is None:
        return None
    (q, q_scale), (kt, k_scale) = q_s, k_s
    block += [qk, g.producer[qk.input[0]], g.producer[qk.input[1]]]
    # K^T: Reshape -> Transpose(0, 2, 1) -> Reshape back to (batch, heads, head size, length)
    back = g.made_by(kt, "Reshape")
    swap = g.made_by(back.input[0], "Transpose") if back is not None else None
    flat = g.made_by(swap.input[0], "Reshape") if swap is not None else None
    if back is None or swap is None or flat is None or _perm(swap) != [0, 2, 1]:
        return None
    block += [back, swap, flat]
    av = g.only_consumer(softmax.output[0], "MatMul")
    if av is None or av.input[0] != softmax.output[0]:
        return None
    out_t = g.only_consumer(av.output[0], "Transpose")
    out_r = g.only_consumer(out_t.output[0], "Reshape") if out_t is not None else None
    if out_t is None or out_r is None or _perm(out_t) != [0, 2, 1, 3]:
        return None
    block += [av, out_t, out_r]
    # Q, K and V: gathers 0, 1, 2 of one (3, batch, heads, length, head size) transpose of the projection
    q_gather, k_gather = g.producer.get(q), g.producer.get(flat.input[0])
    if q_gather is None or k_gather is None or q_gather.op_type != "Gather":
        return None
    perm = g.made_by(q_gather.input[0], "Transpose")
    if perm is None or _perm(perm) != [2, 0, 3, 1, 4]:
        return None
    if not (_heads(g, q, 0, perm) and _heads(g, flat.input[0], 1, perm) and _heads(g, av.input[1], 2, perm)):
        return None
    gathers = g.consumers[perm.output[0]]
    if len(gathers) != 3:
        return None
    block += [perm, *gathers]
    split = g.made_by(perm.input[0], "Reshape")
    if split is None:
        return None
    dims = _split_dims(g, split.input[1])
    if dims is None:
        return None
    three, heads, head_size = dims
    bias_add = g.made_by(split.input[0], "Add")
    if three != 3 or bias_add is None or len(g.consumers[split.input[0]]) != 1:
        return None
    project = next((g.producer[x] for x in bias_add.input if g.made_by(x, "MatMul") is not None), None)
    if project is None or len(g.consumers[project.output[0]]) != 1:
        return None
    bias_name = bias_add.input[1] if bias_add.input[0] == project.output[0] else bias_add.input[0]
    weight, bias = g.initializers.get(project.input[1]), g.initializers.get(bias_name)
    hidden = heads * head_size
    if (
        not project.name
        or weight is None
        or bias is None
        or len(weight.dims) != 2
        or list(weight.dims)[1] != 3 * hidden
    ):
        return None
    if list(bias.dims) != [3 * hidden] or {weight.data_type, bias.data_type} != {onnx.TensorProto.FLOAT}:
        return None
    if _merged_width(g, out_r.input[1]) != hidden:  # the heads back to (batch, length, hidden), as Attention gives
        return None
    block += [split, bias_add, project]
    fused = helper.make_node(
        "Attention",
        [project.input[0], project.input[1], bias_name],
        [out_r.output[0]],
        name=f"{project.name}_attention",
        domain=MS_DOMAIN,
        num_heads=heads,
        unidirectional=int(causal),
        scale=float(q_scale * k_scale),
    )
    return block, fused


def fuse_attention(model: onnx.ModelProto) -> AttentionFusion:
    """Replace each self-attention block of `model` (in place) with one `com.microsoft.Attention` node named after
    its QKV projection ("NAME_attention")."""
    g = _Graph(model.graph)
    replaced: dict[str, onnx.NodeProto] = {}  # the block's last output -> the Attention node that makes it now
    removed: set[int] = set()
    projections: list[tuple[str, str]] = []
    causal = unmatched = 0
    for node in list(model.graph.node):
        if node.op_type != "Softmax":
            continue
        found = _match(g, node)
        if found is None:
            unmatched += 1
            continue
        block, attention = found
        removed.update(id(n) for n in block)
        replaced[attention.output[0]] = attention
        projections.append((block[-1].name, attention.name))  # the block's QKV projection comes last
        causal += int(_attr(attention, "unidirectional", 0) == 1)
    kept: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.output and node.output[0] in replaced:
            kept.append(replaced[node.output[0]])  # where the block ended: every input is made before it
        elif id(node) not in removed:
            kept.append(node)
    kept = _live(kept, {o.name for o in model.graph.output})
    given = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    if not replaced or not _closed(kept, given):  # a block's inner value is read outside it: leave the graph be
        return AttentionFusion(0, 0, unmatched + len(replaced))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return AttentionFusion(len(replaced), causal, unmatched, tuple(projections))


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` without those whose outputs nothing reads any more (the causal masks' and shapes' subgraphs)."""
    while True:
        read = {name for node in nodes for name in node.input} | outputs
        live = [n for n in nodes if any(o in read for o in n.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


def _closed(nodes: list[onnx.NodeProto], given: set[str]) -> bool:
    """Every value a node reads is made by an earlier node or `given` (initializers, graph inputs)."""
    known = given | {""}
    for node in nodes:
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True
