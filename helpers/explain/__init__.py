"""Where the network looks: explanation maps, measured against the truth (notebook 07).

A small package rather than one module, so that the lesson stands in front: ``methods`` holds
the three methods a learner studies beside the notebook (Grad-CAM, occlusion, integrated
gradients, and the one call that asks the backend for a gradient), readable in one sitting
without the bookkeeping around them:

- ``methods``: the maps themselves (``grad_cam``, ``occlusion``, ``integrated_gradients``,
  ``explain``), the class margin they all explain, ``normalise``, ``resize_maps``;
- ``metrics``: the maps against quick mode's trait masks (pointing game, share of positive
  relevance on gendered and neutral regions, random-map baselines, user-level bootstrap);
- ``sanity``: Adebayo et al.'s cascading randomisation (rank correlation per layer randomised);
- ``models``: the trained models of notebooks 04 and 05, when they fit;
- ``summaries``: which faces to explain, mean map per class, where methods disagree,
  examples per age group (what full mode shows without ground truth);
- ``views``: the figures, and the viewer widget (``ExplanationViewer``).

Everything a notebook needs is importable from ``helpers.explain`` directly.
"""
from .methods import (
    GRAD_CAM_LAYER,
    LOGITS_LAYER,
    MEAN_RGB,
    METHODS,
    SIGNED,
    class_margin,
    explain,
    grad_cam,
    gradient_function,
    integrated_gradients,
    margins,
    normalise,
    occlusion,
    occlusion_positions,
    predicted_classes,
    resize_maps,
)
from .metrics import (
    Regions,
    area_share,
    compare_to_baseline,
    dilate,
    pointing_game,
    positive_share,
    random_baseline,
    regions,
    score_maps,
    score_table,
    trait_shares,
    user_bootstrap_means,
)
from .models import load_if_fits
from .sanity import RandomisationResult, cascade_layers, cascading_randomisation, copy_model, rank_correlation
from .summaries import examples_per_group, faces_per_person, mean_maps, method_agreement, most_disagreeing
from .views import (
    ExplanationViewer,
    examples_grid,
    maps_grid,
    method_label,
    plot_cascade_maps,
    plot_mean_maps,
    plot_randomisation,
    plot_scores,
    show_map,
)

__all__ = [
    "ExplanationViewer", "GRAD_CAM_LAYER", "LOGITS_LAYER", "MEAN_RGB", "METHODS", "RandomisationResult", "Regions",
    "SIGNED", "area_share", "cascade_layers", "cascading_randomisation", "class_margin", "compare_to_baseline",
    "copy_model", "dilate", "examples_grid", "examples_per_group", "explain", "faces_per_person", "grad_cam", "gradient_function",
    "integrated_gradients", "load_if_fits", "maps_grid", "margins", "mean_maps", "method_agreement", "method_label",
    "most_disagreeing", "normalise", "occlusion", "occlusion_positions", "plot_cascade_maps", "plot_mean_maps", "plot_randomisation",
    "plot_scores", "pointing_game", "positive_share", "predicted_classes", "random_baseline", "rank_correlation", "regions",
    "resize_maps", "score_maps", "score_table", "show_map", "trait_shares", "user_bootstrap_means",
]
