"""`BudgetMonitor`: warnings when the regularizer is not doing what is meant.

Added to `RegularizedModel.fit` unless `monitor=False`; each warning says
what to change (see the class docstring).
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from morph_net.framework import sources
from morph_net.keras import _proximal
from morph_net.op_regularizers import group_lasso_regularizer


def _source_values(regularizer):
  """[(norms r_c as numpy, threshold)] per source, or None if unknown."""
  out = []
  manager = regularizer.op_regularizer_manager
  relative = getattr(manager, 'normalized_sources', frozenset())
  for s in manager.sources:
    kind = _proximal.source_kind(s)
    if kind == 'gate' or (kind is None and not issubclass(
        s.regularizer_cls, group_lasso_regularizer.GroupLassoRegularizer)):
      return None  # gates: a probability, no norm to hover near a threshold
    kind = kind or 'group_lasso'
    value = tf.cast(tf.convert_to_tensor(s.param), tf.float32)
    norms = _proximal.channel_norms(
        kind, value, _proximal.channel_axis(s, kind),
        _proximal.l1_fraction(s, kind)).numpy()
    if s.op.name in relative:  # measured in units of its own scale
      norms = norms / max(float(np.sqrt(np.mean(np.square(norms)))), 1e-12)
    out.append((norms, sources.threshold(s)))
  return out


_HOVER_ADVICE = {
    False: 'Use exact_zeros=True (proximal step: dead channels become '
           'exactly 0), or lower the learning rate, or raise the threshold '
           'above the oscillation amplitude (~ learning rate for Adam).',
    True: 'Exact zeros are on (a channel falling under the threshold is set '
          'to 0), yet these come back: the task gradient revives them, or '
          'their scale does not matter to the loss (a BatchNorm gamma whose '
          'output feeds another BatchNorm wanders freely). Lower the '
          'learning rate or raise the threshold above the sources\' step '
          'size (~ learning rate for Adam).',
}


class BudgetMonitor(keras.callbacks.Callback):
  """Warns when the regularizer is not doing what the user expects.

  Checked every `check_every` steps; each warning is given once per `fit`:

  * hovering: more than `hover_fraction` of the channels have moved in or
    out of the alive set since the last check while within a factor 2 of
    the alive threshold (under plain gradients an L1 source oscillates
    around 0 with amplitude ~ learning rate x strength x cost weight, so the
    count is set by noise, not by the data);
  * dominating: with a fixed strength above the recommended 1 / initial
    cost, strength x term exceeds `dominance` x the task loss (the larger
    of the current one and the one at the first step). Not under a target:
    there the strength is whatever the controller needs, and nothing in
    the training logs tells a target the task cannot afford (from a seed
    that fit its training set, shrinks of the Pareto benchmark's seeds
    raised the training loss 2x to 70x while the held-out accuracy moved
    -9 to +3 points; the penalty's share of the loss says less still);
  * stalled: the cost has not moved after `patience` steps.

  Args:
    regularizer: the network regularizer.
    cost_name, term_name: the log keys of the cost and the term.
    check_every, patience, hover_fraction, dominance: see above.
    target_cost: T, if the strength is controlled (changes the advice).
    exact_zeros: whether the proximal step is on (changes the advice).
  """

  def __init__(self, regularizer, cost_name, term_name, check_every=25,
               patience=300, hover_fraction=0.05, dominance=10.0,
               target_cost=None, exact_zeros=False):
    super().__init__()
    self._regularizer = regularizer
    self._cost_name = cost_name
    self._term_name = term_name
    self.check_every = int(check_every)
    self.patience = int(patience)
    self.hover_fraction = float(hover_fraction)
    self.dominance = float(dominance)
    self.target_cost = target_cost
    self.exact_zeros = bool(exact_zeros)
    self.warned = set()  # kinds warned in this fit

  def _warn(self, kind, message):
    if kind in self.warned:
      return
    self.warned.add(kind)
    warnings.warn('morph_net (%s): %s' % (kind, message), RuntimeWarning,
                  stacklevel=2)

  def on_train_begin(self, logs=None):
    self.warned = set()
    self._step = 0
    self._first_cost = None
    self._first_strength = None
    self._first_task = None
    self._last_alive = None
    self._flips = None

  def on_train_batch_end(self, batch, logs=None):
    logs = logs or {}
    self._step += 1
    cost = logs.get(self._cost_name)
    if cost is None:
      return
    cost = float(cost)
    strength = float(self.model.strength) if hasattr(
        self.model, 'strength') else None
    if self._first_cost is None:
      self._first_cost = cost
      self._first_strength = strength
    term, loss = logs.get(self._term_name), logs.get('loss')
    if (strength is not None and term is not None and loss is not None
        and self.target_cost is None):
      penalty = strength * float(term)
      self._check_penalty(penalty, float(loss) - penalty, cost, strength)
    if self._step % self.check_every == 0:
      self._check_hover()
    if self._step == self.patience and cost == self._first_cost and (
        self.target_cost is None or cost > self.target_cost):
      self._warn('stalled', 'the cost (%.4g) has not moved in %d steps. %s'
                 % (cost, self.patience, self._stall_advice(strength)))

  def _check_penalty(self, penalty, task, cost, strength):
    """A fixed strength: does strength x term dwarf the task loss?"""
    if self._first_task is None:
      self._first_task = max(task, 1e-12)
    # Against the task loss at the start of fit: a well-fit task's loss
    # goes to ~0, which says nothing about the penalty being too large.
    task = max(task, self._first_task)
    # The recommended scale (strength <= 1 / initial cost) is no mistake:
    # starting from a well-trained network its penalty dwarfs the task
    # loss by design, and advising "1 / initial cost" would be circular.
    if strength * self._first_cost <= 1.01:
      return
    if penalty > self.dominance * max(task, 1e-12):
      # No prediction and no fixed value to go to: the same strength can
      # remove nothing on one network and most channels on another.
      self._warn('dominating', (
          'strength x regularization term (%.4g) is more than %g x the '
          'task loss (%.4g): the regularizer, not the data, drives the '
          'training now (the cost is %.3g x its start). If channels die '
          'faster than you want, lower the strength; to name the cost you '
          'want, pass target_cost=... instead.' % (
              penalty, self.dominance, task, cost / self._first_cost)))

  def _stall_advice(self, strength):
    if self.target_cost is None:
      return ('The strength is too small for this learning rate, or the '
              'alive threshold is below the sources\' oscillation: pass '
              'target_cost=... (the strength is then adapted), use '
              'exact_zeros=True, raise the strength, or raise the '
              'threshold.')
    raised = (strength / self._first_strength
              if strength and self._first_strength else float('nan'))
    return ('The controller has raised the strength %.3g-fold and the '
            'sources still do not respond to the term: LogisticSigmoid '
            'gates that sample at a temperature far under 0.5 pass a '
            'gradient in few steps - build them with add_gates (straight-'
            'through at 0.5) or LogisticSigmoidGating(straight_through='
            'True, temperature=0.5); otherwise raise the learning rate, or '
            'lower the threshold.' % raised)

  def _check_hover(self):
    values = _source_values(self._regularizer)
    if values is None:
      return
    alive = np.concatenate([r > t for r, t in values])
    near = np.concatenate([(r > t / 2) & (r <= 2 * t) for r, t in values])
    if self._last_alive is not None and len(alive):
      # A channel on its way to zero crosses once; one that hovers goes
      # back and forth.
      self._flips += (alive != self._last_alive) & near
      hovering = self._flips >= 2
      if hovering.mean() > self.hover_fraction:
        self._warn('hovering', (
            '%d of %d channels went back and forth across the alive '
            'threshold, within a factor 2 of it: the alive count is '
            'set by the sources\' oscillation, not by the data. %s'
            % (int(hovering.sum()), len(alive), _HOVER_ADVICE[
                self.exact_zeros])))
    else:
      self._flips = np.zeros(len(alive), np.int64)
    self._last_alive = alive

