"""The body of one job attempt, one module per phase, in the order they run:

spec (read and validate the stored job) → source (fetch the model, load it on the device that
environment picks) → data (evaluation and calibration tokens) → resources (estimate, memory
gate) → evaluate (the original, via the baseline cache) → compress (stages, save, load check,
measure the artifact) → report (typed, in app/reports/schema.py) → publish (upload, verify,
manifest last). `execute.py` runs them; from the data on, every phase reads one `JobRun`
(`run.py`); `progress.py` holds the progress bar's spans.
"""
