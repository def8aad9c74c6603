"""Zero-shot prompts per finding, written in the style of the reports themselves
(CheXpert-style prompt sets: several phrasings, averaged). The score of a finding is
the similarity to its positive prompts minus the similarity to its negative ones."""

from __future__ import annotations

ZERO_SHOT_PROMPTS: dict[str, dict[str, list[str]]] = {
    "cardiomegaly": {
        "pos": ["Cardiomegaly.", "The heart is enlarged.", "The cardiac silhouette is enlarged."],
        "neg": ["Heart size is normal.", "The cardiac silhouette is within normal limits.", "No cardiomegaly."],
    },
    "pleural_effusion": {
        "pos": ["Pleural effusion.", "There is a small pleural effusion.", "Blunting of the costophrenic angle."],
        "neg": ["No pleural effusion.", "There is no pleural effusion.", "The costophrenic angles are sharp."],
    },
    "edema": {
        "pos": ["Pulmonary edema.", "There is interstitial edema.", "Findings consistent with pulmonary edema."],
        "neg": ["No pulmonary edema.", "There is no edema.", "No vascular congestion."],
    },
    "pneumothorax": {
        "pos": ["Pneumothorax.", "There is a small pneumothorax.", "Right pneumothorax."],
        "neg": ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."],
    },
    "atelectasis": {
        "pos": ["Atelectasis.", "Bibasilar atelectasis.", "There is subsegmental atelectasis."],
        "neg": ["No atelectasis.", "The lungs are clear.", "No focal airspace disease."],
    },
    "consolidation": {
        "pos": ["Focal consolidation.", "There is airspace disease.", "Opacity consistent with pneumonia."],
        "neg": ["No focal consolidation.", "No airspace disease.", "The lungs are clear."],
    },
    "nodule": {
        "pos": ["Calcified granuloma.", "There is a pulmonary nodule.", "Small nodular opacity."],
        "neg": ["No pulmonary nodules.", "No nodules or masses.", "The lungs are clear."],
    },
    "support_devices": {
        "pos": ["Pacemaker in place.", "Sternotomy wires are present.", "Cardiac pacemaker with leads."],
        "neg": ["No support devices.", "No pacemaker.", "No sternotomy."],
    },
    "emphysema": {
        "pos": ["Emphysema.", "The lungs are hyperinflated.", "Changes of COPD."],
        "neg": ["No emphysema.", "The lungs are normally inflated.", "Normal lung volumes."],
    },
}
