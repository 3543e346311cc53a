"""The controls of a robust / non-robust split: what a reviewer asks for before believing it.

Each check compares the bottleneck's split (Kim, Lee, Ro, NeurIPS 2021) with something that should do worse
if the split means what the paper says. They follow the attribution-sanity literature (Adebayo et al. 2018,
*Sanity checks for saliency maps*: matched random baselines, model-parameter randomisation) and adaptive
evaluation (Tramèr et al. 2020, *On adaptive attacks to adversarial example defenses*):

* :func:`mask_controls` — ``random_subset`` (per image, a uniformly random mask of exactly as many robust
  channels as the image's IB mask; and a random population mask of the population split's size) and
  ``label_oracle`` (no bottleneck: per image the k channels that contribute most to a label's logit, made with
  the true label and with the label control's seeded wrong label). Every accuracy comes with a paired test
  against the IB split on the same images.
* :func:`model_randomisation` — the split rerun on copies of the model whose weights are re-initialised
  cascading from the top (the head, then each block below the split), and each block alone.
* :func:`adaptive_attacks` — the masked model ``x ↦ f_l+(i_r · f_l(x))`` attacked itself, with the population
  mask and with each image's mask held at its clean value, beside the transfer of the full model's attacks.
* :func:`layer_sweep` — Table 1 under the per-image and the population protocol, and the label control, at
  several layers.

Accuracies follow Table 1's convention (a share of all images whose prediction is the true label) and its
``rows[input] = {"int", "robust", "nonrobust"}`` format, inputs ``clean`` and each attack's label.
"""

from .adaptive import MaskedModel, adaptive_attacks
from .layers import layer_sweep, sweep_layers
from .masks import channel_contributions, label_oracle_masks, mask_baselines, mask_controls, random_population_mask, random_subset_masks, top_k_masks
from .outcomes import PARTS, with_intervals
from .randomisation import model_randomisation, randomisation_stages, randomised_copy

__all__ = ["CHECKS", "PARTS", "random_subset_masks", "random_population_mask", "channel_contributions", "top_k_masks",
           "label_oracle_masks", "mask_baselines", "randomisation_stages", "randomised_copy", "MaskedModel", "sweep_layers", "with_intervals",
           "mask_controls", "model_randomisation", "adaptive_attacks", "layer_sweep"]

CHECKS = ("random_subset", "label_oracle", "model_randomisation", "adaptive", "layers")
"""The checks, in the order the report shows them (the keys of ``results.json``'s ``sanity``)."""
