"""Tests for helpers.widgets: the freezing panel edits a plain FreezePlan, checkboxes and slider in sync."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ipywidgets
import pytest

from helpers import finetune, widgets
from helpers.finetune import FreezePlan
from tests.tiny_vgg import keras_tiny_vggface


@pytest.fixture(scope="module")
def model():
    return keras_tiny_vggface(classes=2)


def ticked(panel):
    return {name for name, box in panel.checkboxes.items() if box.value}


def test_default_panel_is_head_only_with_one_checkbox_per_weighted_layer(model):
    panel = widgets.FreezePanel(model, batch_size=8)
    assert isinstance(panel.widget, ipywidgets.VBox)
    assert list(panel.checkboxes) == finetune.weighted_layers(model)
    assert panel.plan.trainable == {"fc8"} and ticked(panel) == {"fc8"}
    assert panel.slider.value == panel.slider.max == 7
    assert f"{model.get_layer('fc8').count_params():,} trainable" in panel.line.value


def test_slider_sets_the_checkboxes_and_the_plan(model):
    panel = widgets.FreezePanel(model, batch_size=8)
    panel.slider.value = 5
    expected = FreezePlan.from_block(model, "block5").trainable
    assert panel.plan.trainable == expected == ticked(panel)
    assert panel.slider_label.value == "block5 + fc + head"
    counts = finetune.trainable_counts(model, panel.plan)
    assert f"{counts['trainable']:,} trainable" in panel.line.value
    assert f"{counts['frozen']:,} frozen" in panel.line.value
    panel.slider.value = 1
    assert panel.plan.trainable == set(finetune.weighted_layers(model)) == ticked(panel)
    assert panel.slider_label.value == "everything"


def test_checkboxes_edit_the_plan_and_move_the_slider_when_they_match_a_block(model):
    panel = widgets.FreezePanel(model, batch_size=8)
    before = panel.line.value
    panel.checkboxes["fc6"].value = True
    assert panel.plan.trainable == {"fc6", "fc8"}
    assert panel.slider.value == 7  # not a "from k up" choice: the slider stays
    assert panel.line.value != before
    panel.checkboxes["fc7"].value = True
    assert panel.plan.trainable == {"fc6", "fc7", "fc8"}
    assert panel.slider.value == 6  # now it is "fc + head"
    assert ticked(panel) == {"fc6", "fc7", "fc8"}  # moving the slider did not rewrite the boxes
    panel.checkboxes["conv1_1"].value = True
    assert panel.plan.trainable == {"conv1_1", "fc6", "fc7", "fc8"}
    assert panel.plan.block_index(model) is None


def test_stage_controls_edit_learning_rates_and_epochs(model):
    panel = widgets.FreezePanel(model, FreezePlan.from_block(model, "block4"), batch_size=8)
    assert panel.slider.value == 4
    panel.finetune_lr.value = 1e-5
    panel.head_epochs.value = 0
    panel.finetune_epochs.value = 7
    assert panel.plan.finetune_lr == pytest.approx(1e-5)
    assert panel.plan.head_epochs == 0 and panel.plan.finetune_epochs == 7
    assert panel.plan.trainable == FreezePlan.from_block(model, "block4").trainable


def test_memory_in_the_live_line_follows_the_batch_size(model):
    plan = FreezePlan.from_block(model, 1)
    small = widgets.FreezePanel(model, plan, batch_size=1)
    large = widgets.FreezePanel(model, plan, batch_size=64)
    assert str(finetune.estimate_training_memory(model, plan, 64)) in large.line.value
    assert small.line.value != large.line.value


def test_panel_rejects_a_plan_naming_unknown_layers(model):
    with pytest.raises(ValueError, match="fc9"):
        widgets.FreezePanel(model, FreezePlan(trainable={"fc9"}))


# ----------------------------------------------------------------------------- ipywidgets 7 and 8
def test_uploaded_files_reads_both_major_versions():
    from types import SimpleNamespace

    v7 = SimpleNamespace(value={"me.jpg": {"metadata": {"name": "me.jpg", "size": 3}, "content": b"abc"}})
    v8 = SimpleNamespace(value=({"name": "me.jpg", "type": "image/jpeg", "size": 3,
                                 "content": memoryview(b"abc"), "last_modified": 0},))
    assert widgets.uploaded_files(v7) == widgets.uploaded_files(v8) == [("me.jpg", b"abc")]
    assert widgets.uploaded_files(ipywidgets.FileUpload()) == []  # the installed version's empty value


def test_tooltips_use_the_installed_versions_attribute():
    major = int(ipywidgets.__version__.split(".")[0])
    slider = widgets._with_tooltip(ipywidgets.FloatSlider(), "why")
    assert getattr(slider, "tooltip" if major >= 8 else "description_tooltip") == "why"


# ----------------------------------------------------------------------------- redrawing panels
def test_layer_picker_redraws_the_chosen_layer():
    drawn = []
    picker = widgets.LayerPicker(["conv1_2", "conv3_3", "pool5"], draw=lambda layer: drawn.append(layer))
    assert picker.value == "pool5" and drawn == []  # the default figure is the notebook's, not the widget's
    picker.dropdown.value = "conv3_3"
    assert drawn == ["conv3_3"] and picker.redraws == 1
    with pytest.raises(ValueError, match="fc9"):
        widgets.LayerPicker(["pool5"], draw=print, value="fc9")


def test_cost_panel_has_a_slider_per_error_and_passes_the_costs():
    seen = []
    panel = widgets.CostPanel(("m", "f", "u"), draw=lambda errors: seen.append(errors),
                              nouns={"m": "men", "f": "women"})
    assert len(panel.sliders) == 6 and panel.sliders[("f", "m")].description == "women as men"
    panel.sliders[("f", "m")].value = 3.0
    assert seen[-1][("f", "m")] == 3.0 and seen[-1][("m", "f")] == 1.0 and len(seen[-1]) == 6


def test_crop_panel_keeps_the_square_inside_the_image():
    boxes = []
    panel = widgets.CropPanel((100, 160), draw=lambda box: boxes.append(box))
    assert panel.box == (30, 0, 100)  # the largest centred square
    panel.side.value = 40
    panel.cx.value = 155  # past the right edge: the square stops at the border
    assert boxes[-1] == (120, 30, 40)
    detected = widgets.CropPanel((100, 160), draw=print, box=(10, 20, 50))
    assert detected.box == (10, 20, 50)
