"""The MLflow adapter, the only place that imports mlflow: ``mlflow_run`` (runs, params, metrics,
artifacts), ``inputs`` (store datasets as run inputs), ``registry`` (registered models, aliases,
pinning, ``resolve_model``) and ``pyfunc_model`` (the servable wrapper); beside them, without
mlflow, ``follow`` (one run per stage, metrics forwarded from training), ``eval_metrics``
(evaluation summaries as metric keys) and ``descriptions`` (a model version's description).
Import the submodule you need; this package imports nothing, so the CLI starts without mlflow."""
