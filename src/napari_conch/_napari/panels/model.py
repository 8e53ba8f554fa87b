"""Model tab: which model, which weights, on which device — and what got loaded."""

from __future__ import annotations

import contextlib
import html

from magicgui.widgets import CheckBox, ComboBox, Label, LineEdit, Password, PushButton
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog

from ...models.weights import CHECKPOINT_SUFFIXES
from ..runner import first_sentence
from ._forms import form, page, refresh_before_opening, rich, row

# Test configurations: selectable by name (settings, scripts), not offered in the list.
HIDDEN_MODELS = ("conch_tiny",)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class ModelPanel:
    """Builds the chosen model in a worker; ``on_model`` gets it on the GUI thread."""

    def __init__(self, session, runner, settings, on_model):
        self.session = session
        self.runner = runner
        self.settings = settings
        self.on_model = on_model
        self._by_name: set[str] = set()  # hidden models chosen by name
        self._devices: list[str] = []  # saved ones, and the GPUs once looked for
        self._devices_found = False

        self.model_name = ComboBox(
            label="Model", choices=self._model_choices, tooltip="The registered models"
        )
        refresh_before_opening(self.model_name, self.refresh_models)
        self.checkpoint = LineEdit(label="")
        self.checkpoint.native.setPlaceholderText(
            "weights file or model folder, hf_hub:<repo>, or empty: auto"
        )
        browse = PushButton(
            text="File…", tooltip=f"A weights file: {', '.join(CHECKPOINT_SUFFIXES)}"
        )
        browse.changed.connect(self._browse_file)
        browse_folder = PushButton(
            text="Folder…", tooltip="A model folder as downloaded from the hub (PLIP, QuiltNet)"
        )
        browse_folder.changed.connect(self._browse_folder)
        self.random_weights = CheckBox(
            text="untrained (random) weights — pipeline check only", label=""
        )
        self.token = Password(label="Token", tooltip="Used for the download only; never saved")
        self.token.native.setPlaceholderText("Hugging Face token (not saved)")
        # GPUs are listed when the list first opens: finding them takes torch (seconds)
        self.device = ComboBox(label="Device", choices=self._device_choices)
        refresh_before_opening(self.device, self._find_devices)
        self.precision = ComboBox(label="Precision", choices=PRECISIONS)
        self.load_button = PushButton(
            text="Load model",
            tooltip="Build the chosen model with these weights (on this device). Without CONCH "
            "weights, try colour-toy on File → Open Sample → napari-conch → Synthetic slide.",
        )
        self.load_button.changed.connect(self.load_model)
        self.model_status = Label(value="No model loaded.")
        rich(self.model_status)
        self.form = form(
            self.model_name,
            row(self.checkpoint, browse, browse_folder, label="Weights"),
            self.random_weights,
            self.token,
            self.device,
            self.precision,
            self.load_button,
        )
        self.native = page(self.form, self.model_status)
        self.refresh_models()

    # -- choices --------------------------------------------------------------------------

    def _model_choices(self, _widget=None) -> list[str]:
        from ...models import available_models

        names = [n for n in available_models() if n not in HIDDEN_MODELS]
        return names + sorted(self._by_name - set(names))

    def refresh_models(self) -> None:
        """Re-read the registry (models registered after docking appear), with descriptions."""
        from ...models.registry import model_entry

        self.model_name.reset_choices()
        combo = self.model_name.native
        for i in range(combo.count()):
            with contextlib.suppress(Exception):
                tip = model_entry(combo.itemText(i)).description
                combo.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)

    def choose(self, name: str) -> None:
        """Select a model by name — hidden test models too (settings, scripts)."""
        from ...errors import UnknownModelError
        from ...models.registry import model_entry

        with contextlib.suppress(UnknownModelError, TypeError):
            model_entry(name)
            self._by_name.add(name)
        self.refresh_models()
        if name in self.model_name.choices:
            self.model_name.value = name

    def _device_choices(self, _widget=None) -> list[str]:
        return ["auto", "cpu", *(d for d in self._devices if d not in ("auto", "cpu"))]

    def _find_devices(self) -> None:
        if not self._devices_found:
            from ...models.device import available_devices

            self._devices_found = True
            self._devices += [d for d in available_devices() if d not in self._devices]
            self.device.reset_choices()

    def choose_device(self, name: str) -> None:
        """A saved device: listed even before the GPUs are looked for."""
        if name and name not in self.device.choices:
            self._devices.insert(0, name)
            self.device.reset_choices()
        if name in self.device.choices:
            self.device.value = name

    # -- actions ----------------------------------------------------------------------------

    def _browse_file(self) -> None:
        pattern = " ".join("*" + s for s in CHECKPOINT_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(
            self.form.native, "Model weights", "", f"Weights ({pattern})"
        )
        if path:
            self.checkpoint.value = path

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.form.native, "Model folder")
        if path:
            self.checkpoint.value = path

    def load_options(self) -> dict:
        """The load_model keywords the form describes (the token only when typed)."""
        options = {
            "checkpoint": "random"
            if self.random_weights.value
            else (self.checkpoint.value.strip() or None),
            "device": self.device.value,
            "precision": self.precision.value,
        }
        token = self.token.value.strip()
        if token:
            options["token"] = token
        return options

    def load_model(self):
        """Load the chosen model (in a worker)."""
        from ...models import load_model

        name = self.model_name.value
        self.load_button.enabled = False
        self.model_status.value = f"Loading {name}…"
        self.settings.save()

        def failed(exc):
            # the status says what happened (the notification has the whole message)
            previous = getattr(self.session.model, "name", None)
            still = f" Still using {previous}." if previous else ""
            self.model_status.value = (
                f"<b>Could not load {name}.</b>{still}<br>{first_sentence(exc)}"
            )

        return self.runner.start(
            load_model,
            name,
            on_return=self.on_model,
            on_error=failed,
            any_slide=True,
            progress={"desc": f"Loading {name}"},
            finished=lambda: setattr(self.load_button, "enabled", True),
            **self.load_options(),
        )

    def show_model(self, model) -> None:
        """Say what is loaded: device, input geometry, trained or not."""
        from ...protocol import is_trained

        trained = is_trained(model)
        device = getattr(model, "device", None)
        where = f" on {device}" if device is not None else ""
        warning = (
            ""
            if trained
            else '<br><b style="color:#e0301e">UNTRAINED weights: results are meaningless.</b>'
        )
        geometry = f"input {model.input_size} px at {model.target_mpp} µm/px"
        kind = "trained" if trained else "untrained"
        about = getattr(model, "description", None)  # e.g. the colour toy says what it is
        note = f"<br><i>{html.escape(about)}</i>" if about else ""
        self.model_status.value = (
            f"<b>{model.name}</b>{where} · {geometry} · {kind} weights{warning}{note}"
        )
