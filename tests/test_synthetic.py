"""Tests of the quick-mode world (helpers.synthetic) on tiny sizes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import synthetic as syn
from helpers.synthetic import pretrain, world
from helpers.synthetic.faces import AGE_GROUPS, render_face, sample_person

# Tiny worlds: a few users and identities, 32 px, a 2-channel network, one epoch.
TINY = syn.SyntheticConfig(
    seed=3, image_size=32, source_identities=4, source_images_per_identity=4, source_heldout_per_identity=1,
    target_users=10, persons_per_user=(1, 2), faces_per_person=(2, 3),
    conv_widths=(2, 2, 4, 4, 4), fc_widths=(8, 8), epochs=1, batch_size=8,
)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty COURSE_HOME (weights/, data/) and results file for one test."""
    monkeypatch.setenv("COURSE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COURSE_RESULTS", str(tmp_path / "results.json"))
    return tmp_path / "home"


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_different_seed_different(tmp_path):
    world.write_adience(tmp_path / "a", TINY)
    world.write_adience(tmp_path / "b", TINY)
    world.write_adience(tmp_path / "c", syn.SyntheticConfig(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    a, b, c = (_tree_bytes(tmp_path / k) for k in "abc")
    assert a == b
    assert a != c
    jpegs_a = {v for k, v in a.items() if k.endswith(".jpg")}
    jpegs_c = {v for k, v in c.items() if k.endswith(".jpg")}
    assert not jpegs_a & jpegs_c  # a different seed draws different faces, not a relabelling

    src = world.render_source(TINY)
    world.write_npz(tmp_path / "s1.npz", src)
    world.write_npz(tmp_path / "s2.npz", world.render_source(TINY))
    assert (tmp_path / "s1.npz").read_bytes() == (tmp_path / "s2.npz").read_bytes()
    loaded = syn.load_source(tmp_path / "s1.npz")
    np.testing.assert_array_equal(loaded["images"], src["images"])
    assert list(loaded["names"]) == list(src["names"])


def test_a_person_varies_only_by_nuisance():
    rng = np.random.default_rng(0)
    person = sample_person(rng, "f", 4)
    x1 = render_face(person, np.random.default_rng(1), 32)
    x2 = render_face(person, np.random.default_rng(1), 32)
    x3 = render_face(person, np.random.default_rng(2), 32)
    assert x1.shape == (32, 32, 3) and x1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    assert np.abs(x1.astype(int) - x3.astype(int)).mean() > 1  # another pose, light, background


# ----------------------------------------------------------------------------- Adience layout

def test_adience_layout_columns_and_reader(tmp_path):
    stats = world.write_adience(tmp_path / "adience", TINY)
    root = tmp_path / "adience"
    header = "user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\tfiducial_yaw_angle\tfiducial_score"
    n_rows = 0
    for k in range(5):
        lines = (root / f"fold_{k}_data.txt").read_text(encoding="utf-8").splitlines()
        assert lines[0] == header
        for line in lines[1:]:
            f = line.split("\t")
            assert len(f) == 12, line
            assert re.fullmatch(r"\d{8}@N0\d", f[0]), f[0]
            assert re.fullmatch(r"\d{11}_[0-9a-f]{10}_o\.jpg", f[1]), f[1]
            assert f[3] in AGE_GROUPS and f[4] in ("m", "f", "u")
            assert all(re.fullmatch(r"-?\d+", v) for v in f[5:]), line
            assert (root / "aligned" / f[0] / f"landmark_aligned_face.{f[2]}.{f[1]}").is_file()
            n_rows += 1
    jpgs = list((root / "aligned").rglob("*.jpg"))
    assert n_rows == len(jpgs) == stats["faces"]
    from PIL import Image

    with Image.open(jpgs[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32) and im.mode == "RGB"

    from helpers.data import read_adience_folds

    df = read_adience_folds(root)
    assert len(df) == stats["faces"] and set(df["fold"]) == set(range(5))


def test_folds_share_no_user_and_source_target_share_no_person():
    people, faces = syn.target_people(TINY)
    fold_of = {}
    for face in faces:
        assert fold_of.setdefault(face.user_id, face.fold) == face.fold
    assert len(fold_of) == TINY.target_users
    assert len({(f.user_id, f.face_id, f.original_image) for f in faces}) == len(faces)
    source = [p for _, p in syn.source_people(TINY)]
    assert not set(source) & set(people)
    names = [n for n, _ in syn.source_people(TINY)]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"Synth_\d{4}_[A-Z][a-z]+", n) for n in names)


def test_gender_and_age_distributions():
    config = syn.SyntheticConfig(target_users=400)
    people, faces = syn.target_people(config)
    assert sum(config.faces_per_person) / 2 * 2 * 400 * 0.7 < len(faces)  # roughly the expected count
    labels = np.array([f.gender for f in faces])
    share = {g: float(np.mean(labels == g)) for g in "mfu"}
    assert 0.35 < share["m"] < 0.6 and 0.35 < share["f"] < 0.6 and 0.01 < share["u"] < 0.1
    ages = np.array([f.age for f in faces])
    assert set(ages) == set(AGE_GROUPS)
    assert np.mean(labels[ages == "(0, 2)"] == "u") > 3 * np.mean(labels[ages == "(25, 32)"] == "u")
    children = [p for p in people if p.age_index <= 2]
    adult_men = [p for p in people if p.age_index >= 4 and p.gender == "m"]
    assert all(p.beard == "none" for p in children) and all(p.beard == "none" for p in people if p.gender == "f")
    assert 0.45 < np.mean([p.beard != "none" for p in adult_men]) < 0.9

    def gap(group, trait):  # mean male minus mean female trait value
        m = [getattr(p, trait) for p in group if p.gender == "m"]
        f = [getattr(p, trait) for p in group if p.gender == "f"]
        return np.mean(m) - np.mean(f)

    babies = [p for p in people if p.age_index == 0]
    adults = [p for p in people if p.age_index >= 4]
    for trait in ("jaw_square", "brow_thick"):
        assert gap(adults, trait) > 0.2 and abs(gap(babies, trait)) < gap(adults, trait) / 2
    # overlap: the distributions are shifted, not separated
    jaw_m = [p.jaw_square for p in adults if p.gender == "m"]
    jaw_f = [p.jaw_square for p in adults if p.gender == "f"]
    assert np.percentile(jaw_m, 5) < np.percentile(jaw_f, 95)
    masc_f = np.array([p.masculinity for p in adults if p.gender == "f"])
    masc_m = np.array([p.masculinity for p in adults if p.gender == "m"])
    assert 0.03 < np.mean(masc_f > 0) < 0.25 and 0.03 < np.mean(masc_m < 0) < 0.25
    # colours are drawn the same way for both genders
    skin_m = np.mean([p.skin for p in adults if p.gender == "m"], axis=0)
    skin_f = np.mean([p.skin for p in adults if p.gender == "f"], axis=0)
    assert np.abs(skin_m - skin_f).max() < 12


# ----------------------------------------------------------------------------- bad parameters

@pytest.mark.parametrize("change, words", [
    ({"source_identities": 0}, "source_identities=0"),
    ({"image_size": 16}, "at least 32 px"),
    ({"n_folds": 4}, "exactly 5 folds"),
    ({"target_users": 3}, "target_users=3"),
    ({"faces_per_person": (3, 1)}, "faces_per_person"),
])
def test_bad_parameters_are_clear_value_errors(change, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        syn.SyntheticConfig(**{**TINY.__dict__, **change}).validate()
    with pytest.raises(ValueError, match=re.escape(words)):
        syn.ensure_built(config=syn.SyntheticConfig(**{**TINY.__dict__, **change}), progress=False)


# ----------------------------------------------------------------------------- interrupted builds

def test_interrupted_target_write_leaves_nothing(tmp_path):
    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt("simulated interruption")
        return render_face(*args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        world.write_adience(tmp_path / "adience", TINY, render=failing_render)
    assert not (tmp_path / "adience").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def test_interrupted_build_never_looks_complete(home, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash during pretraining")

    monkeypatch.setattr(pretrain, "pretrain", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        syn.ensure_built(config=TINY, progress=False)
    assert not syn.manifest_path().exists()
    assert not syn.is_built(TINY)
    assert not (home / "weights" / "mini_vggface").exists()
    leftovers = [p for p in home.rglob("*") if ".part" in p.name]
    assert leftovers == []


# ----------------------------------------------------------------------------- network export

def test_export_parse_convert_round_trip(tmp_path):
    import keras

    from helpers.caffe.convert import convert
    from helpers.vggface import class_names

    keras.utils.set_random_seed(0)
    names = ["Synth_0001_Aaron", "Synth_0002_Bea", "Synth_0003_Carl"]
    model = pretrain.build_training_model(len(names), TINY)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # non-trivial BatchNorm statistics, so that folding is really tested
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 2, g.shape), rng.normal(0, 0.5, b.shape),
                               rng.normal(0, 0.5, m.shape), rng.uniform(0.5, 2, v.shape)])
    x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    plain, net = pretrain.fold_batchnorm(model, TINY, names)
    sample = x[0].astype(np.uint8)
    pretrain.export_caffe(plain, net, tmp_path, names, sample, names[1])
    assert (tmp_path / "names.txt").read_text().split() == names
    assert (tmp_path / "sample_identity.txt").read_text().strip() == names[1]
    assert "layers {" in (tmp_path / "VGG_FACE_deploy.prototxt").read_text()  # the V1 syntax, like the release

    converted = convert(tmp_path / "VGG_FACE_deploy.prototxt", tmp_path / "VGG_FACE.caffemodel",
                        names=tmp_path / "names.txt", progress=False)
    assert class_names(converted) == names
    expected = model.predict(x, verbose=0)
    got = converted.predict(x, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    before = keras.Model(model.input, model.get_layer("relu7").output).predict(x, verbose=0)
    after = keras.Model(converted.input, converted.get_layer("fc7").output).predict(x, verbose=0)
    scale = np.abs(before).max()
    assert scale > 0 and np.abs(after - before).max() <= 1e-4 * scale


# ----------------------------------------------------------------------------- the whole build, tiny

def test_ensure_built_caches_and_story_checks_record(home):
    m1 = syn.ensure_built(config=TINY, progress=False)
    assert m1["built_now"] and syn.is_built(TINY)
    from helpers.course import paths, results

    a = paths.assets_for("quick")
    for p in (a.prototxt, a.caffemodel, a.names, a.sample_image, *a.fold_files):
        assert p.is_file(), p
    assert a.sample_identity in a.names.read_text().split()
    manifest = json.loads(syn.manifest_path().read_text())
    assert manifest["config"] == TINY.to_json() and manifest["target"]["faces"] > 0

    stamp = a.caffemodel.stat().st_mtime_ns
    m2 = syn.ensure_built(config=TINY, progress=False)
    assert not m2["built_now"] and a.caffemodel.stat().st_mtime_ns == stamp
    assert not syn.is_built(syn.SyntheticConfig(**{**TINY.__dict__, "seed": 4}))

    # a forced rebuild with the same seed reproduces the trained weights byte for byte
    before = {p: p.read_bytes() for p in (a.caffemodel, a.sample_image, syn.source_path(), a.fold_files[0])}
    assert syn.ensure_built(config=TINY, force=True, progress=False)["built_now"]
    assert all(p.read_bytes() == b for p, b in before.items())

    out = syn.story_checks(shots=2, draws=1, scratch_epochs=1, progress=False)
    for key in ("probe_pool1", "probe_fc7", "fewshot2_transfer", "fewshot2_scratch"):
        assert 0.0 <= out[key] <= 1.0, key
    recorded = results.load()["results"]
    assert recorded["synthetic.probe.fc7"] == out["probe_fc7"]
    assert recorded["synthetic.fewshot2.scratch"] == out["fewshot2_scratch"]
    assert recorded["synthetic.pretrain.identity_accuracy"] == manifest["pretrain"]["identity_accuracy_heldout"]


def test_story_numbers_are_measured_once_per_build_and_recorded(tmp_path, monkeypatch):
    import json as _json

    from helpers import synthetic
    from helpers.course import paths, results

    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(results.ENV_RESULTS, str(tmp_path / "results.json"))
    calls = []

    def fake_checks(record, progress):
        calls.append(record)
        return {"probe_pool1": 0.6, "probe_fc7": 0.8, "fewshot5_transfer": 0.7, "fewshot5_scratch": 0.5,
                "identity_accuracy": 0.9, "shots": 5, "run": len(calls)}

    from helpers.synthetic import story

    monkeypatch.setattr(story, "story_checks", fake_checks)
    with pytest.raises(FileNotFoundError, match="no synthetic world"):
        synthetic.story_numbers()
    synthetic.manifest_path().parent.mkdir(parents=True)
    synthetic.manifest_path().write_text('{"build": 1}')
    first = synthetic.story_numbers(progress=False)
    again = synthetic.story_numbers(progress=False)
    assert calls == [False] and again == first  # cached: measured once, recorded by story_numbers itself
    stored = results.load()["results"]
    assert stored["synthetic.probe.fc7"] == 0.8 and stored["synthetic.fewshot5.scratch"] == 0.5
    synthetic.manifest_path().write_text('{"build": 2}')  # a rebuilt world is measured again
    assert synthetic.story_numbers(progress=False)["run"] == 2
    assert _json.loads(synthetic.story_path().read_text())["story"]["run"] == 2


# ----------------------------------------------------------------------------- trait masks

def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _adult(gender: str, seed: int = 0, **traits):
    import dataclasses

    person = sample_person(np.random.default_rng(seed), gender, 5)
    return dataclasses.replace(person, **traits)


def _nuisance(seed: int, **changes):
    import dataclasses

    from helpers.synthetic.faces import sample_nuisance

    return dataclasses.replace(sample_nuisance(np.random.default_rng(seed)), angle=8.0, **changes)


def test_masks_leave_the_face_and_its_random_stream_untouched():
    from helpers.synthetic.faces import MASK_TRAITS, render_face_and_masks

    people = [_adult("m", beard="full", moustache=True, glasses=True), _adult("f", 1, earrings=True, eyeliner=1.0),
              sample_person(np.random.default_rng(2), "m", 1)]
    for i, person in enumerate(people):
        for occlusion in (False, True):
            nz = _nuisance(i, occlusion=occlusion)
            r1, r2 = np.random.default_rng(10 + i), np.random.default_rng(10 + i)
            plain = render_face(person, r1, 64, nuisance=nz)
            image, masks = render_face_and_masks(person, r2, 64, nuisance=nz)
            assert image.tobytes() == plain.tobytes()
            assert r1.random() == r2.random()  # the masks drew nothing from the stream
            assert set(masks) == set(MASK_TRAITS)
            assert all(m.shape == (64, 64) and m.dtype == bool for m in masks.values())
            assert masks["occluder"].any() == occlusion
            for name, m in masks.items():  # nothing shows through the object in front of the face
                if name != "occluder" and occlusion:
                    assert not (m & _erode(masks["occluder"])).any(), name


def _erode(mask):
    return ~_dilate(~mask)


@pytest.mark.parametrize("trait, on, off, gone_when_off", [
    ("beard", {"beard": "full"}, {"beard": "none"}, True),
    ("beard", {"beard": "stubble"}, {"beard": "none"}, True),
    ("moustache", {"moustache": True}, {"moustache": False}, True),
    ("glasses", {"glasses": True}, {"glasses": False}, True),
    ("lips", {"lipstick": True}, {"lipstick": False}, False),
    ("earrings", {"earrings": True}, {"earrings": False}, True),
    ("brows", {"brow_thick": 1.0}, {"brow_thick": 0.0}, False),
    ("hair_beyond_head", {"hair_style": "long"}, {"hair_style": "short"}, False),
])
def test_a_trait_changes_the_image_only_inside_its_mask(trait, on, off, gone_when_off):
    """Draw one face with and without a trait (same random stream): the pixels that change lie
    in the trait's mask (one pixel of slack for antialiasing), and most of the mask changes."""
    from helpers.synthetic.faces import render_face_and_masks

    gender = "m" if trait in ("beard", "moustache") else "f"
    nz = _nuisance(3)
    x_on, m_on = render_face_and_masks(_adult(gender, 4, **on), np.random.default_rng(7), 64, nuisance=nz)
    x_off, m_off = render_face_and_masks(_adult(gender, 4, **off), np.random.default_rng(7), 64, nuisance=nz)
    changed = np.abs(x_on.astype(int) - x_off.astype(int)).max(-1) > 24
    region = m_on[trait] | m_off[trait]
    if trait == "hair_beyond_head":  # short hair is hair too: the change is in the hair masks
        region = m_on["hair"] | m_off["hair"]
    assert region.sum() >= 4, f"{trait}: empty mask"
    assert changed.any(), f"{trait}: toggling it changed nothing"
    outside = changed & ~_dilate(region)
    assert outside.sum() <= 0.02 * changed.sum(), f"{trait}: {outside.sum()} of {changed.sum()} changed pixels lie outside its mask"
    if trait not in ("lips", "brows"):  # lips and brows only change colour or width inside them
        assert (changed & region).sum() >= 0.5 * m_on[trait].sum()
    if gone_when_off:
        assert not m_off[trait].any(), f"{trait}: mask present on a face without it"


def test_masks_follow_the_pose_and_a_stricter_coverage_is_a_subset():
    from helpers.synthetic.faces import render_face_and_masks

    person = _adult("m", 5, beard="full", moustache=True)
    _, straight = render_face_and_masks(person, np.random.default_rng(1), 64, nuisance=_nuisance(1, shift_x=0.0))
    _, moved = render_face_and_masks(person, np.random.default_rng(1), 64, nuisance=_nuisance(1, shift_x=0.1))
    col = lambda m: np.flatnonzero(m.any(0)).mean()  # noqa: E731 - the mask's mean column
    assert 4 < col(moved["beard"]) - col(straight["beard"]) < 9  # 0.1 of 64 px: about 6 px to the right
    rows = lambda m: np.flatnonzero(m.any(1)).mean()  # noqa: E731
    assert rows(straight["beard"]) > rows(straight["eyes"]) > rows(straight["hair"])  # beard below the eyes, hair above
    _, strict = render_face_and_masks(person, np.random.default_rng(1), 64, nuisance=_nuisance(1), min_coverage=1.0)
    _, loose = render_face_and_masks(person, np.random.default_rng(1), 64, nuisance=_nuisance(1), min_coverage=0.25)
    for name in loose:
        assert not (strict[name] & ~loose[name]).any(), name
    with pytest.raises(ValueError, match="min_coverage"):
        render_face_and_masks(person, np.random.default_rng(1), 64, min_coverage=0.0)


@pytest.fixture
def masked_world(tmp_path):
    """A small world on disk in the layout trait_masks reads (faces + manifest beside them)."""
    config = syn.SyntheticConfig(**{**TINY.__dict__, "target_users": 40, "faces_per_person": (2, 3)})
    root = tmp_path / "synthetic" / "adience"
    world.write_adience(root, config)
    (root.parent / "manifest.json").write_text(json.dumps({"config": config.to_json()}))
    return root, config


def test_trait_masks_of_the_faces_on_disk(masked_world):
    from PIL import Image

    from helpers.data import read_adience_folds

    root, config = masked_world
    df = read_adience_folds(root)
    masks = syn.trait_masks(df["path"], root)
    assert set(syn.GENDERED_TRAITS) == {"beard", "moustache", "hair_beyond_head", "lips", "brows"}
    assert set(syn.NEUTRAL_TRAITS) == {"glasses", "clutter"}
    assert set(syn.GENDERED_TRAITS) | set(syn.NEUTRAL_TRAITS) <= set(masks)
    n, s = len(df), config.image_size
    assert n > 100 and all(m.shape == (n, s, s) and m.dtype == bool for m in masks.values())
    people, faces = syn.target_people(config)
    by_path = {f.path: people[f.person_index] for f in faces}
    truth = [by_path[p] for p in df["path"]]
    no_beard = np.array([p.gender == "f" or p.age_index <= 2 for p in truth])
    assert not masks["beard"][no_beard].any() and not masks["moustache"][no_beard].any()
    bearded = np.array([p.beard != "none" for p in truth])
    assert bearded.any() and masks["beard"][bearded].any(axis=(1, 2)).mean() > 0.8
    assert masks["lips"].any(axis=(1, 2)).mean() > 0.9 and masks["brows"].any(axis=(1, 2)).mean() > 0.9
    assert masks["clutter"].any(axis=(1, 2)).mean() > 0.3
    strict = syn.trait_masks(df["path"], root, min_coverage=0.75)  # "mostly shows": one trait per pixel
    for a in syn.MASK_TRAITS:
        for b in syn.MASK_TRAITS:
            if a < b and {a, b} != {"hair", "hair_beyond_head"}:
                assert not (strict[a] & strict[b]).any(), (a, b)
    # a subset, in any order, gives the same masks as the whole
    pick = [7, 0, 3]
    again = syn.trait_masks(df["path"].iloc[pick], root)
    np.testing.assert_array_equal(again["beard"], masks["beard"][pick])

    # the default root is quick mode's world
    with pytest.raises(FileNotFoundError, match="no synthetic world"):
        syn.trait_masks(df["path"][:1])
    with pytest.raises(ValueError, match="not faces of the synthetic world"):
        syn.trait_masks(["aligned/nobody/landmark_aligned_face.1.x.jpg"], root)
    # a file that is not the face this world draws there is refused, naming it
    first, second = root / df["path"][0], root / df["path"][1]
    Image.open(second).save(first, format="JPEG")
    with pytest.raises(ValueError, match=re.escape(str(first))):
        syn.trait_masks(df["path"][:1], root)
