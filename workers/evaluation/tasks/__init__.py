"""Built-in lm-evaluation-harness tasks: their data files and the script that made them."""
