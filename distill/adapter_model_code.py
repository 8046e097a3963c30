"""The code MLflow logs with the adapter model ("models from code"): it names the model object.

`distill.adapter_model.log_adapter_model` passes this file as `python_model`, so MLflow copies
it into the logged model and runs it on load instead of unpickling an object (no cloudpickle).
The class itself lives in the installed `distill` package, which the model's requirements pin.
"""

import mlflow.models

from distill.adapter_model import AdapterModel

mlflow.models.set_model(AdapterModel())
