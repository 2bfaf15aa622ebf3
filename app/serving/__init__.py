"""Serving protocols of the ecosystem over the one prediction service (app.models.prediction):
the Open Inference Protocol v2 (KServe, Triton) and MLflow's scoring protocol."""
