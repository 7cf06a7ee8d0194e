"""Quick mode's world: synthetic faces in Adience's layout and a miniature VGG-Face pretrained on them.

The real course fine-tunes VGG-Face (580 MB, trained on 2.6 million photos of 2,622 people)
on Adience. Quick mode replaces both with a faithful miniature of the same story, built on
this machine in a few minutes, and says plainly that it is synthetic:

- a **source** population of synthetic people with identity labels
  (``data/synthetic/source/faces.npz``), on which a miniature VGG-Face (same 13 convolutions,
  same layer names, 1/8 of the channels, 64x64 input) is trained to recognise identities;
- a disjoint **target** population written exactly like Adience
  (``data/synthetic/adience``: ``aligned/<user_id>/landmark_aligned_face.<face_id>.<image>``
  JPEGs and ``fold_0_data.txt`` ... ``fold_4_data.txt``), labelled with gender and age;
- the miniature network published like the real release (``weights/mini_vggface``:
  ``VGG_FACE_deploy.prototxt`` in the V1 syntax, ``VGG_FACE.caffemodel``, ``names.txt``,
  ``sample.png``, ``sample_identity.txt``), so that the conversion notebook runs the same
  code on both.

The network is trained with BatchNorm (plain VGG trains badly from scratch) and the
BatchNorm is folded into the convolution and fc weights before export, so what is published
is the plain Caffe topology.

``ensure_built()`` (and ``python -m helpers.synthetic [--force] [--seed N]``) builds
everything once; a manifest written LAST records the parameters and package versions, and a
later call with the same ones does nothing. Every part is built in a temporary folder and
renamed when complete, so an interrupted build never looks complete. ``story_checks()``
measures that transfer really helps (the numbers the course quotes in quick mode).

Modules: ``faces`` (the renderer), ``world`` (populations, Adience-layout writer, build and
cache), ``pretrain`` (the miniature VGG-Face: training, BatchNorm folding, Caffe export),
``story`` (the measurements notebook 00 shows), ``masks`` (``trait_masks``: where each trait is
in each target face, for judging explanations). Importing this package does not load Keras.
"""
from .masks import GENDERED_TRAITS, MASK_TRAITS, NEUTRAL_TRAITS, trait_masks
from .story import record_story, story_checks, story_numbers, story_path
from .world import (
    GENERATOR_VERSION,
    SyntheticConfig,
    ensure_built,
    identity_name,
    is_built,
    load_source,
    manifest_path,
    source_path,
    source_people,
    target_people,
    world_dir,
)

__all__ = [
    "GENDERED_TRAITS", "MASK_TRAITS", "NEUTRAL_TRAITS", "GENERATOR_VERSION", "SyntheticConfig", "ensure_built",
    "identity_name", "is_built", "load_source", "manifest_path", "record_story", "source_path", "source_people", "story_checks", "story_numbers", "story_path",
    "target_people", "trait_masks", "world_dir",
]
