"""Training: our model's loop and its new-item calibration, the baselines' loop, the train/evaluate jobs, and
training on several processes under torchrun (:mod:`mmrec.train.distributed`). It writes a trained model
(:mod:`mmrec.trained`) that :mod:`mmrec.serve` loads."""

from .config import EXPOSURES, TrainConfig
from .data import TrainingData, load_training_data
from .evaluate import evaluate_model
from .jobs import evaluate_store, train_store
from .loop import FitResult, fit

__all__ = ["EXPOSURES", "FitResult", "TrainConfig", "TrainingData", "evaluate_model", "evaluate_store", "fit",
           "load_training_data", "train_store"]
