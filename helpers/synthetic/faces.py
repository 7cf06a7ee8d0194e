"""The synthetic face renderer behind quick mode: procedurally drawn, clearly artificial faces.

A *person* is a fixed set of traits (head and jaw shape, skin tone, hair, eyes, brows, nose,
lips, beard, glasses, ...) sampled from distributions that depend on gender and age; one
*image* of that person varies only by nuisance (pose, lighting, colour cast, background
clutter, noise, occasional occlusion).

Gender acts through one latent per person, its *masculinity* (N(+-1.6, 1) for adults, so the
two genders overlap), which moves SHAPE and CONFIGURATION traits together (jaw squareness,
head width, hair length and style, brow thickness and arch, lip fullness, beard, shoulder and
neck width, earrings, eyeliner), never the colour
distributions (skin, hair and clothing colours are drawn the same way for everyone), so that
gender is not readable from global colour statistics: a network has to see structure. The
traits gender does not touch (colour palette, eye placement, nose, mouth width, head height,
glasses) vary only a little between people, and per-photo clutter and clothing are muted, so
that gender is the leading direction of identity variation: telling people apart needs the
gendered shape traits (each still person-specific through the latent and its own noise), and
the identity network pretrained on these faces learns to see exactly what gender needs. The
shift is scaled down for children (no beards, similar hair), which makes the youngest age
groups genuinely harder, and the distributions overlap so that gender is learnable but not
trivially so.

Everything is deterministic given a ``numpy.random.Generator``; nothing here touches disk.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..data import AGE_GROUPS

# Adience's eight age groups, in order.
# How strongly gender shows at each age (children carry fewer gender cues).
GENDER_STRENGTH = (0.35, 0.55, 0.8, 0.95, 1.0, 1.0, 1.0, 1.0)
MASCULINITY_SHIFT = 1.7  # adult men's and women's mean latent masculinity: +-1.7 (sd 1): the genders overlap
# (2.0 made the jaw of adult men and women separate at their 5th/95th percentiles: too clean to be honest)
SUPERSAMPLE = 2  # draw at 2x and downsize: cheap antialiasing

# The parts the renderer draws, each with its own mask (``Canvas.trait``) ...
DRAWN_TRAITS = ("hair", "beard", "moustache", "lips", "brows", "eyes", "eyeliner", "earrings", "glasses",
                "nose", "ears", "face", "neck", "clothing", "wrinkles")
# ... the traits gender moves, and traits that carry no gender (what a good explanation avoids) ...
GENDERED_TRAITS = ("beard", "moustache", "hair_beyond_head", "lips", "brows")
NEUTRAL_TRAITS = ("glasses", "clutter")
# ... and every mask ``render_face_and_masks`` returns ("hair_beyond_head": hair outside the head's
# outline; "clutter": the background's shapes where the person does not hide them; "occluder":
# the object in front of the face, when there is one).
MASK_TRAITS = (*GENDERED_TRAITS, *NEUTRAL_TRAITS, "hair", "eyeliner", "earrings", "eyes", "nose", "face",
               "occluder")

HAIR_STYLES = ("sparse", "bald", "short", "medium", "long", "bun")
# Style probabilities (same order as HAIR_STYLES) for men, women, and children before gender shows.
_STYLE_P_MALE = np.array([0.0, 0.08, 0.74, 0.16, 0.02, 0.0])
_STYLE_P_FEMALE = np.array([0.0, 0.0, 0.03, 0.17, 0.66, 0.14])
_STYLE_P_NEUTRAL = np.array([0.0, 0.0, 0.4, 0.4, 0.2, 0.0])

_SKIN_TONES = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 130], [198, 134, 96],
                        [160, 104, 70], [112, 72, 48], [80, 52, 36]], float)
# A deliberately narrow colour palette: colour alone must not tell identities apart, so the
# pretrained network has to learn face shape and configuration (where gender lives).
_SKIN_RANGE = (1.8, 2.6)  # interpolation range into _SKIN_TONES
# Hair colours as narrow as skin: with a wide palette the pretraining told people apart by hair colour
# (a gender-neutral cue) and fc7 read gender less well (issue 15's note gives the measurements).
_HAIR_COLOURS = np.array([[30, 24, 20], [45, 33, 24], [60, 42, 30], [75, 52, 34]], float)
_IRIS_COLOURS = np.array([[60, 40, 20], [100, 70, 40], [60, 110, 170], [80, 120, 80], [40, 30, 25]], float)


@dataclass(frozen=True)
class Person:
    """The traits of one synthetic person (all shape numbers in units of the image size)."""

    gender: str  # "m" or "f": the person's true gender (a written label may still be "u")
    age_index: int  # index into AGE_GROUPS
    skin: tuple
    hair_colour: tuple
    hair_style: str
    head_w: float
    head_h: float
    jaw_square: float  # 0 round/pointed ... 1 square
    eye_y: float
    eye_gap: float
    eye_size: float
    iris: tuple
    eyeliner: float
    brow_thick: float
    brow_arch: float
    nose_len: float
    nose_w: float
    mouth_w: float
    lip_full: float
    lipstick: bool
    beard: str  # "none", "stubble", "goatee", "full"
    moustache: bool
    glasses: bool
    glasses_colour: tuple
    earrings: bool
    shoulder_w: float
    neck_w: float
    fringe: float
    wrinkles: float
    masculinity: float  # the latent behind every gendered trait (overlapping between genders)


def sample_person(rng: np.random.Generator, gender: str, age_index: int) -> Person:
    """Draw one person's traits; ``gender`` is "m" or "f"."""
    if gender not in ("m", "f"):
        raise ValueError(f"a person's true gender must be 'm' or 'f', got {gender!r}")
    if not 0 <= age_index < len(AGE_GROUPS):
        raise ValueError(f"age_index must be in 0..{len(AGE_GROUPS) - 1}, got {age_index}")
    strength = GENDER_STRENGTH[age_index]
    sign = 1.0 if gender == "m" else -1.0
    g = sign * strength  # the gender shift, signed, scaled by age
    child = age_index <= 2
    old = max(0, age_index - 4) / 3.0  # 0 for <38, up to 1 for 60+

    # One latent "masculinity" per person drives every gendered trait together, so that gender
    # is a coherent axis of face variation (as in real faces) while the two genders overlap:
    # N(+-1.6, 1) for adults, i.e. about 95% separable from the latent alone; children less.
    masc = MASCULINITY_SHIFT * g + rng.normal(0, 1)

    def trait(shift, sd, lo=0.0, hi=1.0, base=0.5):
        # ``shift``: the trait's move per unit of masculinity (x 1/MASCULINITY_SHIFT), ``sd``: its own noise
        return float(np.clip(base + shift / MASCULINITY_SHIFT * masc + rng.normal(0, sd * 0.45), lo, hi))

    def plain(sd, base=0.5):
        # a trait gender does not touch: kept low-variance, so that telling people apart leans
        # on the gendered traits (which then become what the identity network learns to see)
        return float(np.clip(base + rng.normal(0, sd * 0.45), 0.0, 1.0))

    def sigmoid(z):
        return 1.0 / (1.0 + math.exp(-z))

    # Colours: identical distributions for everyone (gender must not live in colour statistics).
    t = rng.uniform(*_SKIN_RANGE)
    i = int(t)
    skin = _SKIN_TONES[i] * (1 - (t - i)) + _SKIN_TONES[min(i + 1, len(_SKIN_TONES) - 1)] * (t - i)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.95, 1.05)
    if rng.random() < 0.75 * old:  # grey with age
        grey = rng.uniform(150, 215)
        hair = 0.35 * hair + 0.65 * np.array([grey, grey, grey])

    # Hair style: gendered for adults, mixed towards neutral for children; babies have sparse hair.
    w = sigmoid(3.0 * masc)
    p_gender = w * _STYLE_P_MALE + (1 - w) * _STYLE_P_FEMALE
    p = strength * p_gender + (1 - strength) * _STYLE_P_NEUTRAL
    if gender == "m" and old > 0:  # receding hair with age
        p = p + np.array([0, 0.25 * old, 0, 0, 0, 0])
    p = p / p.sum()
    style = HAIR_STYLES[int(rng.choice(len(HAIR_STYLES), p=p))]
    if age_index == 0:
        style = "sparse" if rng.random() < 0.7 else "short"

    adult_male = gender == "m" and age_index >= 3
    beard = "none"
    if adult_male:
        p_beard = (0.35 if age_index == 3 else 0.9) * sigmoid(2.0 * masc)
        if rng.random() < p_beard:
            beard = str(rng.choice(["stubble", "goatee", "full"], p=[0.4, 0.25, 0.35]))
    moustache = adult_male and (beard in ("goatee", "full") or rng.random() < 0.12)

    head_w = float(np.clip(0.36 + 0.055 * masc / MASCULINITY_SHIFT + rng.normal(0, 0.012) + (0.02 if child else 0.0), 0.3, 0.46))
    head_h = float(np.clip(0.47 + rng.normal(0, 0.008) - (0.03 if child else 0.0), 0.38, 0.56))
    return Person(
        gender=gender,
        age_index=age_index,
        skin=tuple(float(v) for v in skin),
        hair_colour=tuple(float(v) for v in np.clip(hair, 0, 255)),
        hair_style=style,
        head_w=head_w,
        head_h=head_h,
        jaw_square=trait(0.45, 0.2),
        eye_y=float(np.clip(0.47 + rng.normal(0, 0.005) + (0.03 if child else 0.0), 0.42, 0.54)),
        eye_gap=float(np.clip(0.085 + rng.normal(0, 0.003), 0.065, 0.11)),
        eye_size=trait(-0.08, 0.08) + (0.3 if child else 0.0),
        iris=tuple(float(v) for v in _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        eyeliner=float(age_index >= 3 and rng.random() < 0.55 * sigmoid(-2.5 * masc)),
        brow_thick=trait(0.45, 0.2),
        brow_arch=trait(-0.3, 0.2),
        nose_len=plain(0.08) - (0.25 if child else 0.0),
        nose_w=plain(0.08),
        mouth_w=plain(0.08),
        lip_full=trait(-0.3, 0.2),
        lipstick=bool(gender == "f" and age_index >= 3 and rng.random() < 0.3),
        beard=beard,
        moustache=bool(moustache),
        glasses=bool(rng.random() < 0.04 + 0.15 * old),
        glasses_colour=tuple(float(v) for v in rng.uniform(0, 120, size=3)),
        earrings=bool(rng.random() < 0.5 * strength * sigmoid(-2.5 * masc)),
        shoulder_w=trait(0.45, 0.2),
        neck_w=trait(0.4, 0.2),
        fringe=float(rng.random() < 0.2 + 0.6 * strength * sigmoid(-1.5 * masc)),  # a fringe: more often women's
        wrinkles=float(old * rng.uniform(0.4, 1.0)),
        masculinity=float(masc),
    )


def _col(rgb, factor=1.0, alpha=None):
    c = tuple(int(np.clip(v * factor, 0, 255)) for v in rgb)
    return c if alpha is None else c + (int(alpha),)


def _superellipse(cx, cy, a, b, n_top, n_bottom, steps=48):
    """Head outline: an ellipse on top, a squarer superellipse for the jaw."""
    pts = []
    for k in range(steps):
        t = 2 * math.pi * k / steps
        c, s = math.cos(t), math.sin(t)
        n = n_bottom if s > 0 else n_top  # image y grows downwards: s > 0 is the lower half
        x = cx + a * math.copysign(abs(c) ** (2 / n), c)
        y = cy + b * math.copysign(abs(s) ** (2 / n), s)
        pts.append((x, y))
    return pts


class Canvas:
    """A transparent RGBA layer to draw a person on; with ``masks`` on, it also keeps a trait map.

    Every shape goes through the canvas's drawing methods (the ``ImageDraw`` ones the renderer
    uses). Inside ``with canvas.trait("beard"):`` a shape is drawn on the layer as usual and, in
    the trait map, paints that trait's id; outside any trait it paints 0. Later shapes cover
    earlier ones in the map exactly as they do on the layer, so the map says which trait each
    pixel *shows*. The map never draws on the layer and consumes no randomness, so a face drawn
    with masks on is byte for byte the face drawn without.
    """

    def __init__(self, size: int, masks: bool = False):
        self.size = size
        self.layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        self._draw = ImageDraw.Draw(self.layer)
        self.trait_map = Image.new("L", (size, size), 0) if masks else None
        self._map_draw = ImageDraw.Draw(self.trait_map) if masks else None
        # the head's outline as a region (not what is visible): "hair beyond the head" is hair outside it
        self.head_region = Image.new("1", (size, size), 0) if masks else None
        self._current = 0

    @contextmanager
    def trait(self, name: str):
        """Shapes drawn inside this block belong to trait ``name`` (one of ``DRAWN_TRAITS``)."""
        previous = self._current
        self._current = DRAWN_TRAITS.index(name) + 1
        try:
            yield self
        finally:
            self._current = previous

    @contextmanager
    def translucent(self):
        """Shapes drawn inside this block are alpha-blended onto the layer (e.g. stubble) on exit."""
        overlay = Image.new("RGBA", self.layer.size, (0, 0, 0, 0))
        self._draw = ImageDraw.Draw(overlay)
        try:
            yield self
        finally:
            self.layer = Image.alpha_composite(self.layer, overlay)
            self._draw = ImageDraw.Draw(self.layer)

    def mark_head(self, outline) -> None:
        if self.head_region is not None:
            ImageDraw.Draw(self.head_region).polygon(outline, fill=1)

    def _shape(self, method: str, *args, **kwargs) -> None:
        getattr(self._draw, method)(*args, **kwargs)
        if self._map_draw is not None:
            ids = {k: self._current for k in ("fill", "outline") if kwargs.get(k) is not None}
            getattr(self._map_draw, method)(*args, **{**kwargs, **ids})

    def ellipse(self, *a, **k): self._shape("ellipse", *a, **k)
    def rectangle(self, *a, **k): self._shape("rectangle", *a, **k)
    def rounded_rectangle(self, *a, **k): self._shape("rounded_rectangle", *a, **k)
    def polygon(self, *a, **k): self._shape("polygon", *a, **k)
    def chord(self, *a, **k): self._shape("chord", *a, **k)
    def arc(self, *a, **k): self._shape("arc", *a, **k)
    def line(self, *a, **k): self._shape("line", *a, **k)


def _draw_person(person: Person, d: Canvas, smile: float, gaze: float, clothing) -> None:
    """The person on the canvas's transparent layer, upright and centred."""
    S = d.size
    p = person
    cx, cy = 0.5 * S, 0.48 * S
    a, b = p.head_w * S / 2, p.head_h * S / 2
    skin = p.skin
    hair = p.hair_colour
    chin_y = cy + b

    # Long hair falls behind the head and onto the shoulders.
    if p.hair_style == "long":
        with d.trait("hair"):
            d.rounded_rectangle([cx - a * 1.22, cy - b * 1.05, cx + a * 1.22, chin_y + 0.13 * S],
                                radius=int(a * 0.9), fill=_col(hair, 0.9, 255))
    # Shoulders and clothing.
    sw = (0.33 + 0.17 * p.shoulder_w) * S
    with d.trait("clothing"):
        d.ellipse([cx - sw, chin_y + 0.06 * S, cx + sw, chin_y + 0.5 * S], fill=_col(clothing, 1, 255))
    # Neck.
    nw = (0.07 + 0.05 * p.neck_w) * S
    with d.trait("neck"):
        d.rectangle([cx - nw, cy + b * 0.5, cx + nw, chin_y + 0.11 * S], fill=_col(skin, 0.85, 255))
    if p.hair_style == "long":  # strands over the shoulders, in front of the clothing
        with d.trait("hair"):
            for side in (-1, 1):
                x0 = cx + side * a * 1.0
                d.rounded_rectangle([min(x0, x0 + side * 0.11 * S), cy, max(x0, x0 + side * 0.11 * S), chin_y + 0.16 * S],
                                    radius=int(0.04 * S), fill=_col(hair, 0.95, 255))
    # Ears.
    ey = p.eye_y * S
    with d.trait("ears"):
        for side in (-1, 1):
            ex = cx + side * a * 0.98
            d.ellipse([ex - 0.03 * S, ey - 0.04 * S, ex + 0.03 * S, ey + 0.05 * S], fill=_col(skin, 0.92, 255))
    # Head.
    n_bottom = 2.0 + 1.8 * p.jaw_square
    outline = _superellipse(cx, cy, a, b, 2.0, n_bottom)
    with d.trait("face"):
        d.polygon(outline, fill=_col(skin, 1, 255))
    d.mark_head(outline)

    # Hair on top.
    top = cy - b
    with d.trait("hair"):
        if p.hair_style == "sparse":
            for k in range(5):
                x = cx + (k - 2) * a * 0.2
                d.arc([x - 0.04 * S, top - 0.02 * S, x + 0.04 * S, top + 0.06 * S], 200, 340, fill=_col(hair, 1, 255), width=max(1, S // 64))
        elif p.hair_style == "bald":
            for side in (-1, 1):
                d.chord([cx + side * a * 0.6 - 0.08 * S, cy - b * 0.55, cx + side * a * 1.02 + 0.02 * S, cy + b * 0.05],
                        90 if side < 0 else -90, 270 if side < 0 else 90, fill=_col(hair, 1, 255))
        else:
            depth = {"short": 0.32, "medium": 0.5, "long": 0.55, "bun": 0.4}[p.hair_style]
            d.chord([cx - a * 1.06, top - 0.03 * S, cx + a * 1.06, top + 2 * b * depth * 1.2], 180, 360, fill=_col(hair, 1, 255))
            d.rectangle([cx - a * 1.06, top + b * depth * 1.15, cx - a * 0.82, cy + b * (0.05 if p.hair_style == "short" else 0.45)],
                        fill=_col(hair, 1, 255))
            d.rectangle([cx + a * 0.82, top + b * depth * 1.15, cx + a * 1.06, cy + b * (0.05 if p.hair_style == "short" else 0.45)],
                        fill=_col(hair, 1, 255))
            if p.fringe > 0.5:  # a fringe across the forehead
                d.chord([cx - a * 0.9, top + 0.02 * S, cx + a * 0.9, top + b * depth * 1.7], 0, 180, fill=_col(hair, 0.95, 255))
            if p.hair_style == "bun":
                r = 0.07 * S
                d.ellipse([cx - r, top - 1.5 * r, cx + r, top + 0.5 * r], fill=_col(hair, 1, 255))

    # Beard and moustache (drawn before the mouth so the lips stay visible).
    mouth_y = cy + b * 0.55
    if p.beard != "none":
        shade = 0.75 if p.beard == "stubble" else 1.0
        alpha = 110 if p.beard == "stubble" else 255
        with d.trait("beard"), d.translucent():
            if p.beard == "goatee":
                d.ellipse([cx - a * 0.3, mouth_y - 0.01 * S, cx + a * 0.3, chin_y + 0.02 * S], fill=_col(hair, shade, alpha))
            else:
                lower = [pt for pt in outline if pt[1] > cy + b * 0.2]
                d.polygon(lower + [(cx, mouth_y - 0.02 * S)], fill=_col(hair, shade, alpha))
    if p.moustache:
        with d.trait("moustache"):
            d.chord([cx - p.mouth_w * 0.1 * S - 0.05 * S, mouth_y - 0.05 * S, cx + p.mouth_w * 0.1 * S + 0.05 * S, mouth_y + 0.01 * S],
                    180, 360, fill=_col(hair, 1, 255))

    # Eyes.
    er = (0.022 + 0.012 * p.eye_size) * S
    for side in (-1, 1):
        ex = cx + side * p.eye_gap * S
        with d.trait("eyes"):
            d.ellipse([ex - er * 1.4, ey - er, ex + er * 1.4, ey + er], fill=(245, 245, 240, 255))
            ix = ex + gaze * er * 0.5
            d.ellipse([ix - er * 0.7, ey - er * 0.7, ix + er * 0.7, ey + er * 0.7], fill=_col(p.iris, 1, 255))
            d.ellipse([ix - er * 0.3, ey - er * 0.3, ix + er * 0.3, ey + er * 0.3], fill=(10, 10, 10, 255))
        if p.eyeliner:
            with d.trait("eyeliner"):
                d.arc([ex - er * 1.5, ey - er * 1.15, ex + er * 1.5, ey + er * 1.1], 180, 360, fill=(20, 15, 15, 255), width=max(1, S // 60))
                d.line([ex + side * er * 1.4, ey - er * 0.2, ex + side * er * 1.9, ey - er * 0.8], fill=(20, 15, 15, 255), width=max(1, S // 70))
        # Brows.
        by = ey - er - (0.02 + 0.015 * p.brow_arch) * S
        bw = max(1, int((0.006 + 0.016 * p.brow_thick) * S))
        arch = (0.004 + 0.025 * p.brow_arch) * S
        x_in, x_out = ex - side * er * 1.3, ex + side * er * 1.7
        with d.trait("brows"):
            d.line([(x_in, by + arch * 0.3), (ex, by - arch), (x_out, by + arch * 0.6)], fill=_col(hair, 0.8, 255), width=bw, joint="curve")
    # Nose.
    nl = (0.05 + 0.05 * p.nose_len) * S
    nw = (0.018 + 0.02 * p.nose_w) * S
    ny = ey + 0.02 * S
    with d.trait("nose"):
        d.line([(cx, ny), (cx - nw * 0.3, ny + nl), (cx + nw, ny + nl)], fill=_col(skin, 0.7, 255), width=max(1, S // 64))
        d.ellipse([cx - nw, ny + nl - nw * 0.4, cx + nw, ny + nl + nw * 0.5], outline=_col(skin, 0.75, 255), width=max(1, S // 90))
    # Mouth: width, lip fullness, smile.
    mw = (0.05 + 0.04 * p.mouth_w) * S
    lip = (0.006 + 0.02 * p.lip_full) * S
    lip_col = (200, 40, 60) if p.lipstick else _col(skin, 0.72)
    curve = smile * 0.025 * S
    with d.trait("lips"):
        d.chord([cx - mw, mouth_y - lip - curve * 0.3, cx + mw, mouth_y + lip + curve], 0, 180, fill=lip_col + (255,))
        d.chord([cx - mw * 0.85, mouth_y - lip * 1.2, cx + mw * 0.85, mouth_y + lip * 0.2], 180, 360, fill=lip_col + (255,))
        d.line([(cx - mw, mouth_y), (cx + mw, mouth_y)], fill=_col(skin, 0.45, 255), width=max(1, S // 128))
    # Wrinkles.
    if p.wrinkles > 0.3:
        with d.trait("wrinkles"):
            for k in range(1 + int(p.wrinkles * 3)):
                y = top + b * (0.35 + 0.1 * k)
                d.arc([cx - a * 0.5, y, cx + a * 0.5, y + 0.04 * S], 200, 340, fill=_col(skin, 0.78, 255), width=max(1, S // 128))
    # Glasses.
    if p.glasses:
        gr = er * 2.0
        gc = _col(p.glasses_colour, 1, 255)
        with d.trait("glasses"):
            for side in (-1, 1):
                ex = cx + side * p.eye_gap * S
                d.rounded_rectangle([ex - gr * 1.1, ey - gr * 0.8, ex + gr * 1.1, ey + gr * 0.8], radius=int(gr * 0.5), outline=gc, width=max(1, S // 50))
            d.line([(cx - p.eye_gap * S + gr * 1.1, ey), (cx + p.eye_gap * S - gr * 1.1, ey)], fill=gc, width=max(1, S // 60))
    # Earrings.
    if p.earrings:
        with d.trait("earrings"):
            for side in (-1, 1):
                ex = cx + side * a * 0.98
                d.ellipse([ex - 0.013 * S, ey + 0.06 * S, ex + 0.013 * S, ey + 0.086 * S], fill=(230, 200, 60, 255))


def _background(rng: np.random.Generator, S: int, clutter: Image.Image | None = None) -> Image.Image:
    """The photo's background; ``clutter`` (mode "1", S×S), when given, receives the clutter's shapes."""
    base = rng.uniform(30, 225, size=3)
    img = Image.new("RGB", (S, S), _col(base))
    d = ImageDraw.Draw(img)
    m = ImageDraw.Draw(clutter) if clutter is not None else None
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = rng.uniform(-0.2, 1.0, size=2) * S
        w, h = rng.uniform(0.1, 0.6, size=2) * S
        colour = _col(rng.uniform(0, 255, size=3))
        shape = "rectangle" if rng.random() < 0.5 else "ellipse"
        getattr(d, shape)([x0, y0, x0 + w, y0 + h], fill=colour)
        if m is not None:
            getattr(m, shape)([x0, y0, x0 + w, y0 + h], fill=1)
    return img.filter(ImageFilter.GaussianBlur(radius=S / 40))


@dataclass(frozen=True)
class Nuisance:
    """What varies between two images of the same person."""

    angle: float  # degrees, counter-clockwise
    scale: float
    shift_x: float  # fraction of the image size
    shift_y: float
    yaw: float  # horizontal squash, a cheap stand-in for head yaw
    smile: float
    gaze: float
    brightness: float
    cast: tuple
    gradient: float  # side lighting strength, signed
    noise: float
    occlusion: bool
    clothing: tuple  # what the person wears changes from photo to photo


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    return Nuisance(
        angle=float(rng.normal(0, 7)),
        scale=float(rng.uniform(1.25, 1.45)),
        shift_x=float(rng.normal(0, 0.035)),
        shift_y=float(rng.normal(0, 0.035)),
        yaw=float(rng.uniform(0.88, 1.0)),
        smile=float(rng.uniform(-0.3, 1.0)),
        gaze=float(rng.uniform(-1, 1)),
        brightness=float(rng.uniform(0.78, 1.22)),
        cast=tuple(float(v) for v in rng.uniform(0.85, 1.15, size=3)),
        gradient=float(rng.uniform(-0.35, 0.35)),
        noise=float(rng.uniform(0, 7)),
        occlusion=bool(rng.random() < 0.08),
        clothing=tuple(float(v) for v in rng.uniform(70, 190, size=3)),
    )


def render_face(person: Person, rng: np.random.Generator, size: int = 64,
                nuisance: Nuisance | None = None) -> np.ndarray:
    """One image of ``person`` as uint8 RGB (size, size, 3); ``rng`` drives the nuisance."""
    return _render(person, rng, size, nuisance, with_masks=False)[0]


def render_face_and_masks(person: Person, rng: np.random.Generator, size: int = 64,
                          nuisance: Nuisance | None = None,
                          min_coverage: float = 0.25) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``render_face``'s image (the same bytes, the same use of ``rng``) and its trait masks.

    Masks are bool (size, size), one per name in ``MASK_TRAITS``: a pixel belongs to a trait
    when the trait shows on at least ``min_coverage`` of it (the face is drawn at twice the
    size and shrunk, so a pixel is four drawn sub-pixels; 0.25 means one of them). What is
    hidden (under a later shape, under an occluder, outside the image) is in no mask.
    """
    image, masks = _render(person, rng, size, nuisance, with_masks=True, min_coverage=min_coverage)
    return image, masks


def _render(person, rng, size, nuisance, with_masks, min_coverage=0.25):
    if size < 8:
        raise ValueError(f"image size must be at least 8 px, got {size}")
    if not 0 < min_coverage <= 1:
        raise ValueError(f"min_coverage must be in (0, 1], got {min_coverage}")
    nz = nuisance or sample_nuisance(rng)
    S = size * SUPERSAMPLE
    clutter = Image.new("1", (S, S), 0) if with_masks else None
    canvas = _background(rng, S, clutter)
    person_canvas = Canvas(S, masks=with_masks)
    _draw_person(person, person_canvas, nz.smile, nz.gaze, nz.clothing)
    # Pose: rotate, scale, squash (yaw) and shift the person around the image centre.
    th = math.radians(nz.angle)
    sx, sy = nz.scale * nz.yaw, nz.scale
    cos, sin = math.cos(th), math.sin(th)
    c = S / 2
    # PIL's AFFINE maps output (x, y) to input: inverse of (rotate ∘ scale) plus shift.
    ia, ib = cos / sx, sin / sx
    id_, ie = -sin / sy, cos / sy
    tx, ty = c + nz.shift_x * S, c + nz.shift_y * S
    coeffs = (ia, ib, c - ia * tx - ib * ty, id_, ie, c - id_ * tx - ie * ty)
    layer = person_canvas.layer.transform((S, S), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    canvas = canvas.convert("RGBA")
    canvas.alpha_composite(layer)
    occluder = None
    if nz.occlusion:  # something in front of the face: a hand, a cup, another head
        d = ImageDraw.Draw(canvas)
        x0 = rng.uniform(0.1, 0.7) * S
        y0 = rng.uniform(0.3, 0.8) * S
        box = [x0, y0, x0 + rng.uniform(0.2, 0.4) * S, y0 + rng.uniform(0.2, 0.4) * S]
        d.rounded_rectangle(box, radius=int(0.05 * S), fill=_col(rng.uniform(0, 255, size=3), 1, 255))
        if with_masks:
            occluder = Image.new("1", (S, S), 0)
            ImageDraw.Draw(occluder).rounded_rectangle(box, radius=int(0.05 * S), fill=1)
    img = canvas.convert("RGB").resize((size, size), Image.LANCZOS)
    x = np.asarray(img, dtype=np.float32)
    # Lighting: overall brightness, a colour cast, a side-light gradient, sensor noise.
    ramp = 1.0 + nz.gradient * np.linspace(-1, 1, size, dtype=np.float32)[None, :, None]
    x = x * nz.brightness * np.asarray(nz.cast, np.float32)[None, None, :] * ramp
    x = x + rng.normal(0, nz.noise, size=x.shape).astype(np.float32)
    image = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    if not with_masks:
        return image, None
    # The masks go through the same pose (nearest neighbour: ids must not blend), then each
    # drawn sub-pixel counts a quarter of an image pixel.
    trait_map = np.asarray(person_canvas.trait_map.transform((S, S), Image.AFFINE, coeffs, resample=Image.NEAREST))
    head = np.asarray(person_canvas.head_region.convert("L").transform((S, S), Image.AFFINE, coeffs,
                                                                        resample=Image.NEAREST)) > 0
    person_alpha = np.asarray(layer)[..., 3] >= 128
    hidden = np.asarray(occluder) if occluder is not None else np.zeros((S, S), bool)
    drawn = {name: (trait_map == i + 1) & ~hidden for i, name in enumerate(DRAWN_TRAITS)}
    drawn["hair_beyond_head"] = drawn["hair"] & ~head
    drawn["clutter"] = np.asarray(clutter) & ~person_alpha & ~hidden
    drawn["occluder"] = hidden
    k = SUPERSAMPLE
    masks = {}
    for name in MASK_TRAITS:
        coverage = drawn[name].reshape(size, k, size, k).mean(axis=(1, 3))
        masks[name] = coverage >= min_coverage - 1e-9
    return image, masks
