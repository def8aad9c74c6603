"""The code file of every medmm saved model (MLflow models-from-code). It names no model
class and holds no weights: the class that serves a model is an importable medmm path in
the model's config, read by :class:`medmm.tracking.saved_model.ServedModel`. A model folder
carries a copy of this file; medmm's loader refuses the folder unless the copy is byte-for-byte
this file."""

import mlflow

from medmm.tracking.saved_model import ServedModel

mlflow.models.set_model(ServedModel())
