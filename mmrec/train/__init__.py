"""Training: our model's loop and its new-item calibration, the baselines' loop, and the train/evaluate jobs. It
writes a trained model (:mod:`mmrec.trained`) that :mod:`mmrec.serve` loads."""

from .config import EXPOSURES, TrainConfig
from .data import TrainingData, load_training_data
from .evaluate import evaluate_model
from .jobs import evaluate_store, train_store
from .loop import FitResult, fit

__all__ = ["EXPOSURES", "FitResult", "TrainConfig", "TrainingData", "evaluate_model", "evaluate_store", "fit",
           "load_training_data", "train_store"]
