"""ipywidgets panels over plain state objects, safe to use headless.

A panel only EDITS a plain object (here a ``finetune.FreezePlan``) that the training functions
take; a notebook executed without a browser (CI, the course runner) simply trains with the
default object. ``show()`` displays the widget where a front end exists and always prints the
panel's summary line, so the information is in the output either way.
"""
from __future__ import annotations

import ipywidgets as w
import keras

from . import finetune
from .finetune import FreezePlan


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
