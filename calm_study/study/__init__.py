"""Studies: the study file (spec), arm identities, search spaces, the study's state and storage, the Parquet results,
the Optuna export and all of the Ray glue (ray_runner, the only module here that imports Ray)."""
