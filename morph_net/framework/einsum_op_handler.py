"""Einsum and BatchMatMul: dense layers with a weight, or activation products.

A BatchMatMul is read as the einsum it computes ('...mk,...kn->...mn'), so
both op types share one analysis:

* With a weight operand (Keras EinsumDense, Dense on an N-D input): new
  output channels and a bilinear cost,
  FLOPs = 2 x output positions x kernel_size x C_in x C_out,
  when the kernel contracts the activation's channel axes (C_in: the last
  axis, or a head split's (h, j)) and its axes new in the output are the
  output's channel axes (C_out: a Q projection 'btc,chd->bthd' has the H*d
  channels (h, j)); any other kernel axis is contracted with another
  activation axis and counts in kernel_size. Any other equation with a
  weight is an `UnsupportedOpError` that names it.
* With two activation operands (attention's QK^T and AV), both are walked
  and tensors sharing channel letters are tied on them, which makes a head
  one channel group across Q, K, V and the output projection's input. The
  cost is linear in the alive channels of the tensor holding every shared
  letter: FLOPs = 2 x the product of every index size but the batch (a
  weight-free compute entry, `weight_index=None`).
"""

import itertools
import string

import numpy as np

from morph_net.framework import errors
from morph_net.framework import op_handler
from morph_net.framework import op_types

_SUPPORTED = (
    'Supported: a weight operand whose kernel has exactly one axis contracted '
    "with the activation's last (channel) axis and one axis that is the "
    "output's last axis; its other axes contracted with other activation "
    "axes or new output axes (e.g. 'abc,cd->abd', '...c,cd->...d', "
    "'btc,chd->bthd', 'bthd,hde->bte'); or two activation operands "
    "(attention: 'btnh,bsnh->bnts', 'bnts,bsnh->btnh'). Reshape the kernel "
    'to that form, or register your own handler for this op type.')


def _is_constant(tensor, view):
  """Computed from parameters only, in a model fed by data."""
  return not view.depends_on_input(tensor, shapes=True) and view.fed_by_data()


def split_equation(equation):
  """(operand terms, output term) of an explicit einsum equation, or None.

  >>> split_equation(b'btc, chd->bthd')
  (['btc', 'chd'], 'bthd')
  """
  if isinstance(equation, bytes):
    equation = equation.decode()
  eq = equation.replace(' ', '')
  if '->' not in eq:
    return None
  lhs, out = eq.split('->')
  return lhs.split(','), out


def kernel_letters(equation):
  """(contracted, new) letters of a layer's kernel (the second operand):
  those contracted with the activation (its input channels) and those new
  in the output (its output channels), in the kernel's order.

  >>> kernel_letters('btc,chd->bthd')
  (['c'], ['h', 'd'])
  """
  (x, kernel), out = split_equation(equation)
  return ([c for c in kernel if c in x and c not in out],
          [c for c in kernel if c in out and c not in x])


def parse_equation(equation, ranks):
  """(operand terms, output term) with '...' expanded, or None.

  >>> parse_equation('...c,cd->...d', [3, 2])
  (['abc', 'cd'], 'abd')
  """
  split = split_equation(equation)
  if split is None or None in ranks:
    return None
  terms, out = split
  if len(terms) != len(ranks):
    return None
  used = set(''.join(terms) + out)
  spare = [c for c in string.ascii_letters if c not in used]
  widths = [r - (len(t) - 3) for t, r in zip(terms, ranks) if '...' in t]
  ellipsis = ''.join(spare[:max(widths, default=0)])

  def expand(term, rank=None):
    if '...' not in term:
      return term
    n = len(ellipsis) if rank is None else rank - (len(term) - 3)
    return term.replace('...', ellipsis[len(ellipsis) - n:] if n else '')

  terms = [expand(t, r) for t, r in zip(terms, ranks)]
  out = expand(out)
  if any(len(t) != r for t, r in zip(terms, ranks)):
    return None
  return terms, out


def batch_matmul_terms(op):
  """The einsum terms of a BatchMatMul*: batch dims, then rows and columns."""
  rx, ry = op_handler.rank(op.inputs[0]), op_handler.rank(op.inputs[1])
  if rx is None or ry is None or rx < 2 or ry < 2:
    return None
  adj_x = op.get_attr('adj_x')
  adj_y = op.get_attr('adj_y')
  batch = 'abcdefgh'[:max(rx, ry) - 2]
  x = batch[len(batch) - (rx - 2):] + ('km' if adj_x else 'mk')
  y = batch[len(batch) - (ry - 2):] + ('nk' if adj_y else 'kn')
  return [x, y], batch + 'mn'


def _sizes(terms, tensors):
  """Letter -> static size (a broadcast 1 yields to a real size)."""
  sizes = {}
  for term, t in zip(terms, tensors):
    for letter, dim in zip(term, t.shape.as_list()):
      if sizes.get(letter) in (None, 1):
        sizes[letter] = dim if dim is not None else sizes.get(letter)
  return sizes


def _kernel_index(view, weight):
  """An int array of `weight`'s shape: per element, the flat index of the
  variable element it is (`weight` re-lays out a variable through
  reshapes and transposes). None if a shape or perm is not static."""
  path = view.forward_path(weight, layout=True)
  var = view.variable(weight)
  if var is None or None in var.shape.as_list():
    return None
  index = np.arange(var.shape.num_elements()).reshape(var.shape.as_list())
  for t in reversed(path[:-1]):
    if t.op.type == 'Transpose':
      perm = view.static_value(t.op.inputs[1])
      if perm is None:
        return None
      index = np.transpose(index, [int(p) for p in np.ravel(perm)])
    else:
      shape = view.shape(t)
      if shape is None or None in shape:
        return None
      index = index.reshape(shape)
  return index


def _variable_out_axis(view, weight, axes, c_out):
  """Channel axes of the variable behind `weight`, for GroupLasso.

  `axes`: the weight's output-channel axes (from the end), `c_out` their
  channel count. When the variable is the weight itself and the axes are
  in the kernel's order, they are the answer (one axis as an int). Keras
  traces some
  EinsumDense equations with the kernel reshaped (a [C, H, d] kernel as
  [C, H*d]) or transposed and reshaped ('abc,dce->abde'): the channels are
  then the variable axes that hold them, in order (an int or a tuple), or,
  if no set of axes does, an int array [C, K] whose row c holds the flat
  variable indices of channel c's weights. None if the layout is unknown.
  """
  plain = axes[0] if len(axes) == 1 else tuple(axes)
  var = view.variable(weight) if view.eager else None
  same = var is None or var.shape.as_list() == weight.shape.as_list()
  if same and list(axes) == sorted(axes):
    return plain
  if same:  # output channels in another order than the kernel's axes
    if None in weight.shape.as_list():
      return None
    index = np.arange(weight.shape.num_elements()).reshape(
        weight.shape.as_list())
  else:
    index = _kernel_index(view, weight)
  if index is None:
    return None
  front = [a % index.ndim for a in axes]
  rows = np.moveaxis(index, front, list(range(len(front)))).reshape(
      c_out, -1)
  shape = list(index.shape) if same else var.shape.as_list()
  flat = np.arange(rows.size).reshape(shape)
  for keep in itertools.chain.from_iterable(
      itertools.combinations(range(len(shape)), k)
      for k in range(1, len(shape))):
    if int(np.prod([shape[a] for a in keep])) != c_out:
      continue
    pattern = np.moveaxis(flat, keep, list(range(len(keep)))).reshape(
        c_out, -1)
    if np.array_equal(np.sort(pattern, 1), np.sort(rows, 1)):
      named = tuple(a - len(shape) for a in keep)
      return named[0] if len(named) == 1 else named
  return rows


class EinsumOpHandler(op_handler.OpHandler):
  """Einsum and BatchMatMul*: EinsumDense layers and attention products."""

  handles_channel_axes = True

  def _terms(self, op):
    if op.type == 'Einsum':
      return parse_equation(op.get_attr('equation'),
                            [op_handler.rank(t) for t in op.inputs])
    return batch_matmul_terms(op)

  def data_inputs(self, op, view):
    return [i for i, t in enumerate(op.inputs)
            if op_handler.is_float(t) and not op_types.is_weight(t, view)]

  def analyze(self, op, ctx):
    parsed = self._terms(op)
    if parsed is None:
      raise self._error(op, 'its equation or operand ranks are not known')
    terms, out_term = parsed
    weights = [i for i, t in enumerate(op.inputs)
               if op_types.is_weight(t, ctx.view)]
    if len(op.inputs) == 1:
      if terms[0][-1] == out_term[-1]:
        ctx.tie(op.outputs[0], op.inputs[0])  # a transpose keeping channels
      return
    if len(op.inputs) != 2:
      raise self._error(op, 'it has %d operands' % len(op.inputs))
    if len(weights) == 1:
      self._analyze_weighted(op, ctx, terms, out_term, 1 - weights[0],
                             weights[0])
    elif not weights:
      self._analyze_product(op, ctx, terms, out_term)
    else:
      raise self._error(op, 'both operands are weights')

  def _error(self, op, why):
    equation = (op.get_attr('equation') if op.type == 'Einsum'
                else 'adj_x=%s, adj_y=%s' % (op.get_attr('adj_x'),
                                             op.get_attr('adj_y')))
    if isinstance(equation, bytes):
      equation = equation.decode()
    return errors.UnsupportedOpError(
        'Op %r (%s, %s) cannot be analyzed: %s. %s'
        % (op.name, op.type, equation, why, _SUPPORTED))

  def _analyze_weighted(self, op, ctx, terms, out_term, act_i, w_i):
    """y = x . W: FLOPs = 2 x positions x kernel_size x C_in x C_out.

    The activation's channel axes (its last, or a head split's (h, j)) are
    contracted with kernel axes: C_in is their product. Kernel axes new in
    the output are its channel axes (a Q projection 'btc,chd->bthd' makes
    the H*d channels (h, j)): C_out is their product. Kernel axes
    contracted with other activation axes multiply kernel_size, like a
    conv's spatial axes (weights = kernel_size x C_in x C_out).
    """
    a, w = terms[act_i], terms[w_i]
    act, weight, out = op.inputs[act_i], op.inputs[w_i], op.outputs[0]
    rank_a = len(a)
    c_in_letters = [a[ax % rank_a] for ax in ctx.channel_axes(act)]
    w_shape = weight.shape.as_list()
    # Unit batch axes of the weight broadcast over the activation's.
    kernel = [l for l, d in zip(w, w_shape)
              if not (d == 1 and l in a and l in out_term)]
    c_out_letters = [l for l in out_term if l in kernel and l not in a]
    extra_in = [l for l in kernel if l in a and l not in out_term
                and l not in c_in_letters]
    kept = (set(a) - set(extra_in) - set(c_in_letters)) | set(c_out_letters)
    if (not c_out_letters or any(l not in kernel or l in out_term
                                 for l in c_in_letters)
        or len(set(w)) != len(w)
        or len(kernel) != len(c_in_letters) + len(c_out_letters)
        + len(extra_in) or set(out_term) != kept
        or len(out_term) != len(set(out_term)) or out_term[0] != a[0]):
      raise self._error(
          op, 'the kernel (operand %d, %r) does not contract the '
          "activation's channel axes (%s) and add new output-channel axes, "
          'with only other contracted axes besides'
          % (w_i, w, ''.join(c_in_letters)))
    dims = lambda letters: [w_shape[w.index(l)] for l in letters]
    if None in dims(kernel):
      raise self._error(op, 'a kernel axis has no static size')
    k_in = int(np.prod(dims(c_in_letters), dtype=np.int64))
    c_out = int(np.prod(dims(c_out_letters), dtype=np.int64))
    if ctx.channels(act) is None and len(c_in_letters) == 1:
      ctx.set_channels(act, k_in)
    if c_out_letters != [out_term[-1]]:
      ctx.set_channel_axes(out, [out_term.index(l) - len(out_term)
                                 for l in c_out_letters])
    axes = [w.index(l) - len(w) for l in c_out_letters]
    out_axis = _variable_out_axis(ctx.view, weight, axes, c_out)
    ctx.add_compute(op, act, out, positions=ctx.positions(out),
                    kernel_size=int(np.prod(dims(extra_in), dtype=np.int64)),
                    weight_index=w_i, out_axis=out_axis)

  def _analyze_product(self, op, ctx, terms, out_term):
    """x . y of two activations: ties, and a weight-free linear cost.

    Each tensor's channel axes are named by their letters. Tensors sharing
    channel letters are tied on them (`tie_axes`): QK^T with heads
    'BTNH,BSNH->BNTS' ties query and key channel (n, j) and makes the
    scores' channels their heads n (axis -3); AV 'BNTS,BSNH->BTNH' ties the
    scores' head n to value and output channels (n, j). So a head lives or
    dies as a whole. The cost is linear in the alive channels of the tensor
    holding every shared channel letter (query/key, or value/output):
    FLOPs = 2 x the product of every index size but the batch.
    """
    (tx, ty), (x, y), out = terms, op.inputs[:2], op.outputs[0]
    sizes = _sizes(terms + [out_term], [x, y, out])
    batch = out_term[0] if tx[0] == ty[0] == out_term[0] else None
    letters_of = lambda t, term: [term[ax % len(term)]
                                  for ax in ctx.channel_axes(t)]
    # A parameter table (ViTDet's gathered relative positions) ties nothing.
    lx, ly = [[] if _is_constant(t, ctx.view) else letters_of(t, term)
              for t, term in ((x, tx), (y, ty))]
    # One example traced: the batch axis may hold heads or windows.
    lo = [l for l in out_term if (l in lx or l in ly)
          and (l != batch or ctx.view.one_example)]
    if lo and lo != [out_term[-1]]:
      ctx.set_channel_axes(out, [out_term.index(l) - len(out_term)
                                 for l in lo])
    lo = lo or [out_term[-1]]
    named = [(x, lx), (y, ly), (out, lo)]
    for i, (t1, l1) in enumerate(named):
      for t2, l2 in named[i + 1:]:
        if set(l1) & set(l2):
          ctx.tie_axes(t1, l1, t2, l2)
    shared = {l for l in lx + ly + lo
              if sum(l in names for _, names in named) > 1}
    holders = [(t, names) for t, names in named if shared <= set(names)]
    if not holders:
      raise self._error(op, 'no operand holds all the channel axes that '
                        'the operands share (%s)' % ''.join(sorted(shared)))
    bearer, names = max(holders, key=lambda h: len(h[1]))
    other = next(t for t, _ in named[:2] if t is not bearer)
    # One example traced: the batch letter counts windows/heads moved there.
    letters = [l for l in sorted(set(tx + ty + out_term))
               if l != batch or ctx.view.one_example]
    dims = [sizes.get(l) for l in letters]
    size = [sizes.get(l) for l in names]
    positions = (None if None in dims or None in size else
                 int(np.prod(dims, dtype=np.int64))
                 // int(np.prod(size, dtype=np.int64)))
    ctx.add_compute(op, other, bearer, positions=positions, kernel_size=1,
                    linear=True, weight_index=None,
                    in_positions=ctx.positions(other),
                    out_positions=ctx.positions(out))
