"""todsynth: task-oriented data synthesis for remote-sensing semantic segmentation.

The method library (data, text, models, train, sample, seg, metrics). It knows nothing of
MLflow, Optuna or suites; the harness in ``bench/`` wraps it.
"""

__version__ = "0.1.0"
