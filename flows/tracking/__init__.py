"""The MLflow adapter, the only place that imports mlflow: ``mlflow_run`` (runs, params, metrics,
artifacts), ``follow`` (one run per stage, metrics forwarded from training), ``registry``
(registered models, aliases, ``resolve_model``) and ``pyfunc_model`` (the servable wrapper).
Import the submodule you need; this package imports nothing, so the CLI starts without mlflow."""
