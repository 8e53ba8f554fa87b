"""The widget's export questions: which formats to write, and what to do with earlier files."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QDialog, QDialogButtonBox, QLabel, QMessageBox, QVBoxLayout

from ..formats import REGISTRY

REPLACE, KEEP_BOTH = "replace", "keep both"


def choose_formats(parent, selected) -> list[str] | None:
    """Ask which formats to write (``selected`` ticked); None when the user cancels."""
    dialog = QDialog(parent)
    dialog.setWindowTitle("Export formats")
    layout = QVBoxLayout(dialog)
    layout.addWidget(QLabel("Write these files (a summary JSON is always written):"))
    boxes = {}
    for fmt in REGISTRY:
        box = QCheckBox(fmt.label)
        box.setChecked(fmt.name in selected)
        layout.addWidget(box)
        boxes[fmt.name] = box
    buttons = QDialogButtonBox(
        QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
    )
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout.addWidget(buttons)
    if not dialog.exec():
        return None
    return [name for name, box in boxes.items() if box.isChecked()]


def ask_overwrite(parent, existing: list[Path]) -> str | None:
    """Earlier exports of the same name exist: replace them, keep both (the new files get a
    numbered name), or cancel (None)."""
    names = "\n".join(f"  {p.name}" for p in existing[:8])
    more = f"\n  … and {len(existing) - 8} more" if len(existing) > 8 else ""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Files exist")
    box.setText(f"This folder already holds an export of this slide:\n{names}{more}")
    replace = box.addButton("Replace them", QMessageBox.ButtonRole.DestructiveRole)
    keep = box.addButton("Keep both", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(keep)
    box.exec()
    clicked = box.clickedButton()
    return REPLACE if clicked is replace else KEEP_BOTH if clicked is keep else None
