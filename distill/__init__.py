"""distill: reasoning distillation from a teacher LLM into a small student, tracked in MLflow."""

__version__ = "0.1.0"
