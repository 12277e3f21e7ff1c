"""spider-optax: SPIDER with a clipped learning rate for optax.

Variance-reduced clipping (Reisizadeh, Li, Das, Jadbabaie, 2023): the SPIDER
recursive gradient estimator with an (L0, L1)-clipped learning rate, as
composable optax transformations.
"""

from spider_optax import autoclip
from spider_optax import lookup
from spider_optax import muon
from spider_optax import smoothness_fit
from spider_optax import theory
from spider_optax.alias import spider
from spider_optax.alias import storm
from spider_optax.anchoring import anchor_due
from spider_optax.anchoring import is_anchor_step
from spider_optax.clipping import clip_by_leaf_norm
from spider_optax.clipping import global_norm
from spider_optax.clipping import relaxed_clip
from spider_optax.clipping import relaxed_clip_factor
from spider_optax.clipping import RelaxedClipState
from spider_optax.correction import corrected_momentum
from spider_optax.correction import CorrectedMomentumState
from spider_optax.correction import recursive_correction
from spider_optax.correction import RecursiveCorrectionState
from spider_optax.estimator import spider_estimator
from spider_optax.estimator import SpiderEstimatorState
from spider_optax.lookup import diagnostics
from spider_optax.lookup import prev_params
from spider_optax.loop import spider_loop
from spider_optax.mars import mars_adamw
from spider_optax.mars import mars_lion
from spider_optax.mars import mars_muon
from spider_optax.mars import mars_shampoo
from spider_optax.measurement import SpiderDiagnostics
from spider_optax.paired import paired_grad
from spider_optax.paired import paired_value_and_grad
from spider_optax.previous import keep_prev_params
from spider_optax.previous import KeepPrevParamsState
from spider_optax.wrappers import apply_if_finite

__version__ = '0.1.0'


def __getattr__(name):
  # `so.flax` needs the optional flax extra: import it on first use only.
  if name == 'flax':
    import importlib

    return importlib.import_module('spider_optax.flax')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = (
  'anchor_due',
  'apply_if_finite',
  'autoclip',
  'clip_by_leaf_norm',
  'corrected_momentum',
  'CorrectedMomentumState',
  'diagnostics',
  'global_norm',
  'is_anchor_step',
  'keep_prev_params',
  'KeepPrevParamsState',
  'lookup',
  'mars_adamw',
  'mars_lion',
  'mars_muon',
  'mars_shampoo',
  'muon',
  'paired_grad',
  'paired_value_and_grad',
  'prev_params',
  'recursive_correction',
  'RecursiveCorrectionState',
  'relaxed_clip',
  'relaxed_clip_factor',
  'RelaxedClipState',
  'spider',
  'spider_estimator',
  'SpiderDiagnostics',
  'SpiderEstimatorState',
  'smoothness_fit',
  'spider_loop',
  'storm',
  'theory',
)
