"""Planning the layers a slim plan cannot walk through: blocks (layers with
weighted sublayers), rebuilt by a width rule or narrowed in place.

Private to `morph_net.keras`.
"""

import keras
import numpy as np

from morph_net.keras import _blocks
from morph_net.keras import _surgery
from morph_net.keras import _width_rules as rules
from morph_net.keras._keras_graph import Channels
from morph_net.keras._keras_graph import full
from morph_net.keras._keras_graph import width


def block(plan, node, live, ctx):
  """A layer with prunable sublayers: rebuilt by its width rule when its
  input or a sublayer's width changes."""
  analysis, widths, alive, round_to, forced, _ = ctx
  op = node.operation
  subs = _blocks.leaves(op)
  plan.seen.update(id(s) for s in subs)
  keys = {id(s): analysis.key_of[id(s)] for s in subs
          if id(s) in analysis.key_of}

  def new_width(key):
    if key in forced:
      return analysis.round_count(key, 1, round_to)
    return widths.get(key, analysis.width(key))

  changed = [k for k in keys.values() if new_width(k) != analysis.width(k)]
  out_w = width(node.outputs[0])
  if not changed and all(full(plan, t) for t in live):
    return Channels(out_w)
  _blocks.check_no_zero(op, [k for k in keys.values() if new_width(k) == 0])
  rule = rules.block_rule(op)
  if rule is None:  # narrowed in place: its own code is kept
    return narrowed(plan, node, analysis, tuple(keys.values()))
  plan.blocks.add(id(op))
  _blocks.check_rules(op, lambda s: new_width(keys[id(s)]) if id(s) in keys
                      else None)  # whole heads, agreeing fields: fail here
  order = {}
  for s in subs:
    key = analysis.any_key_of.get(id(s))
    if key is None:
      continue
    order[id(s)] = analysis.order_of(key)
    w_in, w_out = analysis.label_widths(key, plan.label_values)
    plan.leaf_width[id(s)] = new_width(key) if key in analysis.entries \
        else w_out
    plan.leaf_input[id(s)] = w_in
  plan.block_input.update(_blocks.input_widths(op, order, plan.leaf_input))
  if live and live[0] is node.input_tensors[0]:
    plan.block_input[id(op)] = plan.info[id(live[0])].width
  if rule.output == 'input':
    if width(live[0]) != out_w:
      raise NotImplementedError(
          'The width rule of %s says its output channels are its input\'s, '
          'but layer %r maps %s channels to %s.'
          % (type(op).__name__, op.name, width(live[0]), out_w))
    return plan.info[id(live[0])]
  sub = _blocks.output_sublayer(op, rule)
  key = keys.get(id(sub))
  if key is None:
    if id(sub) in plan.leaf_width:
      return Channels(plan.leaf_width[id(sub)])
    return Channels(out_w)
  new = new_width(key)
  kept = None if alive is None else alive.get(key)
  if kept is not None and len(kept) != new:
    extra = np.setdiff1d(np.arange(analysis.width(key)), kept)
    kept = np.sort(np.concatenate([kept, extra[:new - len(kept)]])).astype(
        np.int64)
  return Channels(new, kept, (key,))


def leaf_shape(analysis, values, layer):
  """(new input width, new output width) of a weighted leaf under
  per-label widths `values`, or None where both are unchanged or not
  known from the analysis (its weights feed no analyzed op)."""
  labels = analysis.leaf_labels(layer)
  if labels is None:
    return None
  in_labels, out_labels = labels
  shape = tuple(None if l is None else int(round(values[l].sum()))
                for l in (in_labels, out_labels))
  original = tuple(None if l is None else len(l) for l in labels)
  return None if shape == original else shape


def narrowed(plan, node, analysis, keys):
  """A custom layer without a width rule: a copy whose weighted sublayers
  are narrowed (`_surgery`); its output width is what its own code makes
  of them."""
  op = node.operation
  values = plan.label_values
  shapes = {id(s): leaf_shape(analysis, values, s)
            for s in _blocks.leaves(op) if s.weights}
  signature = tuple(sorted((k, v) for k, v in shapes.items()
                           if v is not None))
  new_inputs = {}
  for t in node.input_tensors:
    chans = plan.info[id(t)]
    new_inputs[id(t)] = keras.KerasTensor(
        tuple(t.shape[:-1]) + (chans.width,), dtype=t.dtype)
  in_sig = tuple(new_inputs[id(t)].shape for t in node.input_tensors)
  cache = analysis.narrowed_cache
  key = (id(op), signature, in_sig)
  if key not in cache:
    made = {}
    new, record = _surgery.slim_copy(
        op, lambda s: shapes.get(id(s)), _blocks.clone_leaf, made)
    args, kwargs = node.arguments.fill_in(new_inputs)
    try:
      spec = new.compute_output_spec(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise NotImplementedError(
          'slim_model: custom layer %r (%s) fails when its sublayers are '
          'narrowed (%s: %s). Its call reads a width from its config (e.g. '
          'a head count or a reshape): register a width rule for it '
          '(morph_net.keras.register_width_rule), or leave its sublayers '
          'out of the structure.' % (op.name, type(op).__name__,
                                     type(e).__name__, e)) from e
    cache[key] = (new, record, made, keras.tree.flatten(spec))
  new, record, made, specs = cache[key]
  plan.narrowed[id(op)] = (new, record, made)
  if len(specs) != len(node.outputs):
    raise NotImplementedError(
        'slim_model: custom layer %r returns %d tensors where the model '
        'used %d.' % (op.name, len(specs), len(node.outputs)))
  chans = [Channels(width(spec), None, keys) for spec in specs]
  return chans if len(chans) > 1 else chans[0]
