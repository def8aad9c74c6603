"""The finding vocabulary shared by the report labeler, the demo cohort and the metrics.

Names are snake_case and stable: they appear in manifests, MLflow metric names and
configs. ``no_finding`` is derived (no other finding positive), never labelled directly.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "edema",
    "pneumothorax",
    "atelectasis",
    "consolidation",  # consolidation / airspace opacity / infiltrate
    "nodule",  # nodule / granuloma / mass
    "support_devices",  # pacemaker / ICD / sternotomy wires
    "emphysema",  # emphysema / COPD / hyperinflation
)
NO_FINDING = "no_finding"
EFFUSION_SIDES: tuple[str, ...] = ("left", "right", "bilateral")
