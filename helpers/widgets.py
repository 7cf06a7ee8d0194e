"""ipywidgets panels over plain state objects, safe to use headless.

A panel only EDITS a plain object (a ``finetune.FreezePlan``, a cost table, a crop) or redraws a
figure from one; a notebook executed without a browser (CI, the course runner) simply goes on
with the default object, and draws the default figure outside the widget. ``show()`` displays
the widget where a front end exists and always prints the panel's summary line, so the
information is in the output either way.

- :class:`FreezePanel` (notebook 05): which layers train, learning rates, epochs, memory.
- :class:`LayerPicker` (notebook 02): a dropdown of layers, redrawing a figure per layer.
- :class:`CostPanel` (notebook 06): a slider per kind of error, re-choosing the decision rule.
- :class:`CropPanel` and :func:`uploaded_files` (notebook 06, "Try it on your own photo").

Works with ipywidgets 7.7 (Colab's) and 8.x; the few differences between them (the value of
``FileUpload``, ``tooltip``) are handled here, in one place.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import ipywidgets as w
import keras

from . import finetune
from .finetune import FreezePlan

IPYWIDGETS_MAJOR = int(w.__version__.split(".")[0])


class FreezePanel:
    """The freezing panel of notebook 05.

    One checkbox per layer with weights, grouped by block; a slider "train everything from
    group k up" kept in sync with the checkboxes (moving it sets them; ticking boxes that
    amount to a "from k up" choice moves it, any other choice leaves it where it was); a
    learning rate and a number of epochs per stage; a live line with trainable and frozen
    parameters and the memory estimate. ``.plan`` is the current ``FreezePlan``.
    """

    def __init__(self, model: keras.Model, plan: FreezePlan | None = None, batch_size: int = 32):
        self.model = model
        self.batch_size = int(batch_size)
        self.groups = finetune.layer_groups(model)
        self._group_names = list(self.groups)
        self.plan = plan if plan is not None else FreezePlan.head_only(model)
        self.plan.check(model)
        self._syncing = False

        self.checkboxes = {
            layer: w.Checkbox(value=layer in self.plan.trainable, description=layer, indent=False,
                              layout=w.Layout(width="auto"))
            for layers in self.groups.values() for layer in layers
        }
        k = self.plan.block_index(model)
        self.slider = w.IntSlider(
            value=k if k is not None else len(self._group_names), min=1, max=len(self._group_names),
            description="train from", readout=False, continuous_update=False,
            style={"description_width": "initial"},
        )
        self.slider_label = w.Label(self._slider_text(self.slider.value))
        self.head_lr = w.FloatLogSlider(value=self.plan.head_lr, base=10, min=-6, max=-1, step=0.25,
                                        description="head lr", readout_format=".1e")
        self.finetune_lr = w.FloatLogSlider(value=self.plan.finetune_lr, base=10, min=-7, max=-2, step=0.25,
                                            description="fine-tune lr", readout_format=".1e")
        self.head_epochs = w.IntSlider(value=self.plan.head_epochs, min=0, max=50, description="head epochs")
        self.finetune_epochs = w.IntSlider(value=self.plan.finetune_epochs, min=0, max=50,
                                           description="fine-tune epochs")
        self.line = w.HTML(self.summary())

        for box in self.checkboxes.values():
            box.observe(self._on_checkbox, names="value")
        self.slider.observe(self._on_slider, names="value")
        for control in (self.head_lr, self.finetune_lr, self.head_epochs, self.finetune_epochs):
            control.observe(self._on_stage_control, names="value")

        rows = [
            w.HBox([w.Label(group, layout=w.Layout(width="70px")),
                    *[self.checkboxes[layer] for layer in layers]])
            for group, layers in self.groups.items()
        ]
        self.widget = w.VBox([
            w.HBox([self.slider, self.slider_label]),
            *rows,
            w.HBox([self.head_lr, self.head_epochs]),
            w.HBox([self.finetune_lr, self.finetune_epochs]),
            self.line,
        ])

    # -------------------------------------------------------------- state
    def summary(self) -> str:
        return finetune.describe_plan(self.model, self.plan, self.batch_size)

    def _slider_text(self, k: int) -> str:
        groups = self._group_names[k - 1:]
        return "everything" if k == 1 else f"{' + '.join(groups)}"

    def _set_plan(self, **changes) -> None:
        self.plan = self.plan.replace(**changes)
        self.line.value = self.summary()

    # -------------------------------------------------------------- events
    def _on_checkbox(self, change) -> None:
        if self._syncing:
            return
        trainable = frozenset(name for name, box in self.checkboxes.items() if box.value)
        self._set_plan(trainable=trainable)
        k = self.plan.block_index(self.model)
        if k is not None and k != self.slider.value:
            self._syncing = True
            try:
                self.slider.value = k
                self.slider_label.value = self._slider_text(k)
            finally:
                self._syncing = False

    def _on_slider(self, change) -> None:
        self.slider_label.value = self._slider_text(change["new"])
        if self._syncing:
            return
        trainable = FreezePlan.from_block(self.model, change["new"]).trainable
        self._syncing = True
        try:
            for name, box in self.checkboxes.items():
                box.value = name in trainable
        finally:
            self._syncing = False
        self._set_plan(trainable=trainable)

    def _on_stage_control(self, change) -> None:
        self._set_plan(head_lr=self.head_lr.value, finetune_lr=self.finetune_lr.value,
                       head_epochs=self.head_epochs.value, finetune_epochs=self.finetune_epochs.value)

    # -------------------------------------------------------------- display
    def show(self) -> None:
        """Display the panel (where a front end exists) and print the current choice."""
        from IPython.display import display

        display(self.widget)
        print(self.summary())


# ============================================================================ ipywidgets 7 and 8

def uploaded_files(upload) -> list[tuple[str, bytes]]:
    """``[(file name, content bytes)]`` of a ``FileUpload`` widget, in either major version.

    ipywidgets 7 holds ``{name: {"metadata": {...}, "content": bytes}}``; 8 holds a tuple of
    ``{"name", "type", "size", "content": memoryview, "last_modified"}``.
    """
    value = upload.value
    if isinstance(value, Mapping):  # ipywidgets 7
        return [(str(name), bytes(item["content"])) for name, item in value.items()]
    return [(str(item["name"]), bytes(item["content"])) for item in value]  # ipywidgets 8


def _with_tooltip(widget, text: str):
    """Set a hover text: ``description_tooltip`` in ipywidgets 7, ``tooltip`` in 8."""
    setattr(widget, "tooltip" if IPYWIDGETS_MAJOR >= 8 else "description_tooltip", text)
    return widget


class _RedrawPanel:
    """A control row above an Output area that a ``draw(**state)`` function redraws into."""

    def __init__(self, controls: Sequence, draw: Callable[..., object]):
        self.draw = draw
        self.output = w.Output()
        self.redraws = 0
        self.widget = w.VBox([*controls, self.output])
        for control in controls:
            control.observe(self._redraw, names="value")

    def state(self) -> dict:
        raise NotImplementedError

    def _redraw(self, _change=None) -> None:
        import matplotlib.pyplot as plt

        self.redraws += 1
        with self.output:
            self.output.clear_output(wait=True)
            self.last = self.draw(**self.state())
            plt.show()

    def show(self) -> None:
        """Display the controls; the figure appears when a control moves (the default figure is
        drawn by the notebook itself, outside the widget, so a headless run has it too)."""
        from IPython.display import display

        display(self.widget)


class LayerPicker(_RedrawPanel):
    """Notebook 02's layer picker: a dropdown of layer names; ``draw(layer=name)`` redraws."""

    def __init__(self, layers: Sequence[str], draw: Callable[..., object], value: str | None = None,
                 description: str = "layer"):
        layers = list(layers)
        if not layers:
            raise ValueError("LayerPicker needs at least one layer name")
        value = layers[-1] if value is None else value
        if value not in layers:
            raise ValueError(f"LayerPicker: {value!r} is not among the layers {layers}")
        self.dropdown = w.Dropdown(options=layers, value=value, description=description)
        super().__init__([self.dropdown], draw)

    @property
    def value(self) -> str:
        return self.dropdown.value

    def state(self) -> dict:
        return {"layer": self.dropdown.value}


class CostPanel(_RedrawPanel):
    """Notebook 06's costs of errors: one slider per (true, decided) pair of different classes;
    ``draw(errors={(true, decided): cost})`` re-chooses the rule and redraws."""

    def __init__(self, class_names: Sequence[str], draw: Callable[..., object],
                 nouns: Mapping[str, str] | None = None, max_cost: float = 10.0):
        names = list(class_names)
        nouns = dict(nouns or {})
        self.sliders = {
            (t, d): _with_tooltip(
                w.FloatSlider(value=1.0, min=0.1, max=float(max_cost), step=0.1, continuous_update=False,
                              description=f"{nouns.get(t, t)} as {nouns.get(d, d)}",
                              style={"description_width": "initial"}, layout=w.Layout(width="420px")),
                f"the cost of deciding {d!r} for a face whose true class is {t!r}")
            for t in names for d in names if t != d}
        super().__init__(list(self.sliders.values()), draw)

    @property
    def errors(self) -> dict[tuple[str, str], float]:
        return {e: float(s.value) for e, s in self.sliders.items()}

    def state(self) -> dict:
        return {"errors": self.errors}


class CropPanel(_RedrawPanel):
    """A square crop of an image chosen by three sliders (centre x, centre y, side, in pixels);
    ``draw(box=(left, top, side))`` redraws. Starts from ``box`` (a detected face) or the
    largest centred square."""

    def __init__(self, image_hw: tuple[int, int], draw: Callable[..., object], box: tuple[int, int, int] | None = None):
        h, w_ = int(image_hw[0]), int(image_hw[1])
        side = min(h, w_) if box is None else int(box[2])
        left, top = ((w_ - side) // 2, (h - side) // 2) if box is None else (int(box[0]), int(box[1]))
        self.hw = (h, w_)
        slider = dict(continuous_update=False, style={"description_width": "initial"}, layout=w.Layout(width="420px"))
        self.cx = w.IntSlider(value=left + side // 2, min=0, max=w_ - 1, description="centre x", **slider)
        self.cy = w.IntSlider(value=top + side // 2, min=0, max=h - 1, description="centre y", **slider)
        self.side = w.IntSlider(value=side, min=8, max=min(h, w_), description="side", **slider)
        super().__init__([self.cx, self.cy, self.side], draw)

    @property
    def box(self) -> tuple[int, int, int]:
        """(left, top, side) of the square, moved inside the image where the sliders point past it."""
        h, w_ = self.hw
        side = int(min(self.side.value, h, w_))
        left = int(min(max(self.cx.value - side // 2, 0), w_ - side))
        top = int(min(max(self.cy.value - side // 2, 0), h - side))
        return left, top, side

    def state(self) -> dict:
        return {"box": self.box}
