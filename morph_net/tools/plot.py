"""Bar charts of per-layer widths: the seed network vs the learned structure.

Like the MorphNet paper's figure: one bar per layer, the seed (original)
width drawn behind the learned width, so shrunk layers stand out. Uses the
Agg backend through `matplotlib.figure.Figure` (no pyplot global state, no
display needed).
"""

import os

from morph_net.framework import atomic_files as _atomic

__all__ = ['check_format', 'plot_widths']


def check_format(path):
  """The format of `path` ('png' for no suffix), or ValueError if
  matplotlib cannot write it (e.g. '.txt')."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  suffix = os.path.splitext(path)[1] or '.png'
  formats = FigureCanvasAgg.get_supported_filetypes()
  if suffix[1:].lower() not in formats:
    raise ValueError('cannot write a plot as %r: use one of %s.' % (
        suffix, ', '.join('.' + f for f in sorted(formats))))
  return suffix[1:].lower()


def plot_widths(learned, path, seed=None, title=None, log_scale=False):
  """Writes a PNG bar chart of per-layer widths.

  Args:
    learned: {layer name: learned width}, plotted in its iteration order.
    path: output file; written atomically (temp file + rename). Its suffix
      picks the format ('.png', '.pdf', '.svg').
    seed: optional {layer name: seed width}; drawn behind the learned bars.
    title: optional figure title.
    log_scale: log-scaled width axis (for networks with very wide layers).

  Returns:
    path.

  Raises:
    ValueError: the structure is empty or the suffix names a format
      matplotlib cannot write (e.g. '.txt').
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  names = list(learned)
  if not names:
    raise ValueError('Nothing to plot: the structure is empty.')
  fmt = check_format(path)
  positions = list(range(len(names)))
  fig = Figure(figsize=(max(6.0, 0.28 * len(names) + 2.0), 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  if seed:
    ax.bar(positions, [seed.get(n, 0) for n in names], width=0.8,
           color='#c7c7c7', edgecolor='#7f7f7f', label='seed')
  ax.bar(positions, [learned[n] for n in names], width=0.55 if seed else 0.8,
         color='#1f77b4', label='learned')
  ax.set_xticks(positions)
  ax.set_xticklabels(names, rotation=90, fontsize=7 if len(names) > 30 else 9)
  ax.set_xlim(-0.6, len(names) - 0.4)
  ax.set_ylabel('output channels')
  if log_scale:
    ax.set_yscale('log')
  else:  # headroom for the legend
    top = max(list(learned.values()) + list((seed or {}).values()) + [1])
    ax.set_ylim(0, top * 1.3)
  if seed:
    total_seed = sum(seed.get(n, 0) for n in names)
    total = sum(learned.values())
    ax.legend(loc='upper left', title='%d -> %d channels' % (total_seed,
                                                              total))
  else:
    ax.legend(loc='upper left')
  ax.set_title(title or 'Per-layer widths')
  ax.grid(axis='y', alpha=0.3)
  fig.tight_layout()

  with _atomic.atomic_path(path, suffix='.' + fmt) as tmp:
    fig.savefig(tmp, format=fmt)
  return path
