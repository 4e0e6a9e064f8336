"""LAION aesthetic scoring: predictors (registry, download, loading), batch and folder scoring, ranking, and keeping
the score with the image. Runs without ComfyUI (the nodes and the ``aesthete score`` command use it)."""
